"""`python -m glassfinder.cli`: the `glassfinder` command."""

import sys

from glassfinder.cli import main

if __name__ == "__main__":
    sys.exit(main())
