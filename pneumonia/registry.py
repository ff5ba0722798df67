"""`python -m pneumonia.registry`: the MLflow model registry, `pneumonia.model.registry`:
list, fetch."""

import sys

from pneumonia.model.registry import main

if __name__ == "__main__":
    sys.exit(main())
