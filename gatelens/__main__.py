"""``python -m gatelens``: the ``gatelens`` command line."""

import sys

from gatelens._console import main

if __name__ == "__main__":
    sys.exit(main())
