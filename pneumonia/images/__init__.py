"""Image decoding and preparation: bytes (JPEG, PNG, DICOM) to the model's input, the cheap "is
this a chest X-ray?" checks and heatmaps. No TensorFlow, and nothing else of the project: every
other package may import it."""
