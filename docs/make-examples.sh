#!/usr/bin/env bash
# Makes the README's examples from a real run: a local PanDA (`hpcpilot serve`), a 3-rank pilot
# (2 worker ranks) with 5 jobs - one leaking towards its memory limit, two clean, one failing, one that
# burns 0.3 s of CPU - a `hpcpilot status` screen taken while it runs, and the report's memory plot,
# copied to docs/report-example.png.  Work lands in a new temporary directory (printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
run=$(mktemp -d -t hpcpilot-docs.XXXXXX) port=${PORT:-25099}
.venv/bin/python - "$run/jobs.json" <<'PY'
import json, sys
from tests.pilotrun import REPO, make_job
py, payload = sys.executable, REPO / "examples" / "leaky_payload.py"
leaky = f"{py} {payload} --leak-kb 192 --interval 0.1 --duration 20"  # towards its 80 MiB limit (2 x 40 MB)
clean = f"{py} {payload} --leak-kb 0 --interval 0.1 --duration 8"
burn = f"{py} -c 'import time; [None for _ in iter(lambda: time.process_time() < 0.3, False)]'"
jobs = [make_job(4101, leaky, minRamCount=40), make_job(4102, clean), make_job(4103, clean),
        make_job(4104, "echo 'no such input' >&2; exit 3"), make_job(4105, burn)]
json.dump(jobs, open(sys.argv[1], "w"))
PY
.venv/bin/hpcpilot serve --port "$port" --state "$run/panda.db" --jobs "$run/jobs.json" >"$run/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
sleep 2
.venv/bin/mpiexec -n 3 .venv/bin/hpcpilot run --site-config site_configs/laptop.toml \
    --server "http://127.0.0.1:$port" --queue Q --workdir "$run/work" --walltime 3600 \
    --set stage.output_dir="$run/outputs" --set monitor.report_interval=0.5 --set monitor.status_interval=1 \
    --log-dir "$run/logs" >"$run/pilot.out" 2>&1 &
pilot=$!
# the screen is taken once the failed job is in (while the leaking one still runs), or after 60 s
for _ in $(seq 300); do
    .venv/bin/python -c 'import json, sys; s = json.load(open(sys.argv[1])); sys.exit(s["jobs"]["failed"] == 0)' \
        "$run/work/status.json" 2>/dev/null && break
    sleep 0.2
done
.venv/bin/hpcpilot status "$run/work" | tee "$run/status.txt"
wait $pilot || echo "pilot exit status $?"
.venv/bin/hpcpilot report "$run/work/run.h5" --plots "$run/plots" | tee "$run/report.txt"
cp "$run/plots/memory_per_rank.png" docs/report-example.png
ls -l docs/report-example.png
echo "the run: $run"
