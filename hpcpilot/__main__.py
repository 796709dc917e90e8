"""``python -m hpcpilot ...`` is the same as the ``hpcpilot`` console script."""

from hpcpilot.cli import main

raise SystemExit(main())
