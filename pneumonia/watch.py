"""`python -m pneumonia.watch`, `pneumonia.ops.watch`:
the drift monitor on the scoring stack's newest rows in S3, and its GitHub issue."""

import sys

from pneumonia.ops.watch import main

if __name__ == "__main__":
    sys.exit(main())
