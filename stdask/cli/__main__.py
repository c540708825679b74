"""``python -m stdask.cli``: the ``stdask`` command where the console script is not installed."""
import sys

from . import main

sys.exit(main())
