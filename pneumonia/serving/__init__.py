"""Serving: the ONNX model behind API Gateway and Lambda, and the same handler locally.

- inference: one onnxruntime session factory and batched prediction (also used by
  the export stage's parity check and the benchmarks);
- classifier: a loaded model (model.onnx + model.json, checked against each other)
  and the classification of one encoded image;
- requests: what a client may send (JSON with base64, or a raw image body);
- app: the Powertools resolver and `lambda_handler` (the image's CMD);
- batch: backlog scoring of a folder or an s3:// prefix (`python -m pneumonia.batch`);
- fanout: the image's second handler, S3 objects from SQS;
- local: the handler behind HTTP(S) on this machine, as `sam local start-api` would;
- openapi: writes lambda/openapi.json from the resolver.
"""
