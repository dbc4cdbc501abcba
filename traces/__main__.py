"""``python -m traces``: the same command line as ``moesim-trace`` (:mod:`traces.cli`)."""

import sys

from traces.cli import main

sys.exit(main())
