"""`python -m pneumonia.review`: the pull-request report, `pneumonia.ops.review`:
metrics against the base's seed spread."""

import sys

from pneumonia.ops.review import main

if __name__ == "__main__":
    sys.exit(main())
