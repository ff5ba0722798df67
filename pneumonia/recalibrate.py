"""`python -m pneumonia.recalibrate`, `pneumonia.serving.recalibrate`: a site's operating point
refitted on its own labelled sample."""

import sys

from pneumonia.serving.recalibrate import main

if __name__ == "__main__":
    sys.exit(main())
