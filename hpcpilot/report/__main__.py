"""``python -m hpcpilot.report RUN.h5 ...``: the report without the rest of the command line."""

import sys

from hpcpilot.report.command import main

sys.exit(main())
