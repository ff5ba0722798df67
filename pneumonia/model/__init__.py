"""The network and what is done with it: training, ONNX export, parity with Keras, the model card,
the release and the MLflow registry."""
