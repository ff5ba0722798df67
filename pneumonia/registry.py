"""`python -m pneumonia.registry`: the MLflow model registry, `pneumonia.release.registry`:
list, fetch."""

import sys

from pneumonia.release.registry import main

if __name__ == "__main__":
    sys.exit(main())
