"""Pneumonia detection on chest X-rays: the library the stages and the endpoint share.

Packages by lifecycle; imports flow one way, from the top of this list to the bottom
(docs/code-layout.md, checked by tests/unit/test_layout.py):

- ops, evaluation, model, serving, data, decision: each imports only packages below it;
- config, paths, machine, tracking: params.yaml, DVC's paths, the CPU record, MLflow;
- images: decoding and preparation, imported by all, importing none.

The modules beside these packages are the command lines (`python -m pneumonia.batch`,
`monitor`, `dataset`, `review`, `registry`): each runs the `main` of its package's module.
"""
