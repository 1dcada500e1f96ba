"""``python -m aot ...``: the ``aot`` command, for a checkout without the console script installed."""

import sys

from .cli import main

sys.exit(main())
