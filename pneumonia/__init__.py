"""Code shared by the pipeline stages and the prediction endpoint.

Modules here import no TensorFlow except `pneumonia.model`, so serving can use
`pneumonia.imaging` and `pneumonia.metadata` without it.
"""
