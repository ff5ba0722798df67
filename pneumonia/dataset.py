"""`python -m pneumonia.dataset`, `pneumonia.ops.dataset`:
the versioned dataset, from the DVC cache, the remote or a fallback folder."""

import sys

from pneumonia.ops.dataset import main

if __name__ == "__main__":
    sys.exit(main())
