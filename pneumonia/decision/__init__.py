"""From the network's outputs to an answer: calibration, the indeterminate band, the feature gate
and the model.json contract. numpy and pydantic only; ships in the Lambda image."""
