"""``python -m moesim.traces``: the same command line as ``moesim-trace`` (:mod:`traces.cli`)."""

import sys

from moesim.traces.cli import main

sys.exit(main())
