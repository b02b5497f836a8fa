"""``python -m growc`` (and ``torchrun -m growc train RECIPE``) runs the command line."""

import sys

from growc.cli import main

sys.exit(main())
