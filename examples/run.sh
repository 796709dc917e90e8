#!/usr/bin/env bash
# The main example: three PanDA jobs from a Harvester access point, run by `hpcpilot run` on
# one rank (no mpiexec). Sets up .venv first. Work lands in ./example-run (removed on start).
set -euo pipefail
cd "$(dirname "$0")/.."
bash setup.sh
run=example-run
rm -rf "$run" && mkdir -p "$run"
cp -r examples/access_point "$run/access_point"
.venv/bin/hpcpilot run --site-config site_configs/laptop.toml \
    --harvester-dir "$run/access_point" --workdir "$run/work" \
    --set stage.input_dir=examples/inputs --set stage.output_dir="$run/outputs" \
    --log-dir "$run/logs"
echo "outputs: $(ls "$run/outputs" | tr '\n' ' ')"
