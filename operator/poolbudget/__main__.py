"""`python -m poolbudget ...`: the same as the `poolbudget` command."""

import sys

from poolbudget.cli import main

if __name__ == "__main__":
    sys.exit(main())
