#!/usr/bin/env bash
# The whole test suite on a fresh machine: set up .venv with the test extras, then pytest.
# As root with apt-get, the Slurm tier installs slurm-wlm and munge and starts a one-node
# cluster through slurm/cluster.sh (tests/slurm/conftest.py); elsewhere it is skipped with a reason.
set -euo pipefail
cd "$(dirname "$0")/.."
bash setup.sh --test
.venv/bin/ruff check hpcpilot tests bench examples serve
exec .venv/bin/python -m pytest -q "$@"
