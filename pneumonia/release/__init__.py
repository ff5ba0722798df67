"""A release of the trained model: the ONNX export in canonical form, its parity with Keras,
the model card, model.json from evaluate's choices, and the MLflow registry."""
