"""A release of the trained model: the ONNX export in canonical form (its network in int8 when
quantized), its parity with what evaluate scored and with Keras, the model card, model.json
from evaluate's choices, and the MLflow registry."""
