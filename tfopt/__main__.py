"""``python -m tfopt``: the same as the ``tfopt`` command."""

import sys

from tfopt.cli import main

sys.exit(main())
