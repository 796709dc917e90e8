#!/bin/sh
# Run the pilot as one rank, no launcher (a laptop, a test): launchers/single.sh --site-config FILE ...
# HPCPILOT_PYTHON: the venv's python.  Logic lives in hpcpilot/launchers.py (LocalLauncher).
exec "${HPCPILOT_PYTHON:-python3}" -m hpcpilot run "$@"
