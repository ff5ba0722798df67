"""`python -m pneumonia.monitor`, `pneumonia.ops.monitor`:
drift of a window of predictions against validation's."""

import sys

from pneumonia.ops.monitor import main

if __name__ == "__main__":
    sys.exit(main())
