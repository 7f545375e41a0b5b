"""``python -m buttress``: the ``buttress`` command line (see `buttress.cli`)."""

import sys

from buttress.cli import main

if __name__ == "__main__":
    sys.exit(main())
