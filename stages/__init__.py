"""The DVC pipeline's stages (dvc.yaml), one module each: `python -m stages.<name>`."""
