"""``python -m hpcpilot_serve``: the ``hpcpilot-serve`` command."""

import sys

from hpcpilot_serve.cli import main

sys.exit(main())
