#!/usr/bin/env bash
# The `gpu` preset as one script, for a GPU machine borrowed for a short while: train, score on
# Val untuned, tune the inference steps for `balanced`, score again. Each step's wall time is
# printed; five files go to OUT: log.txt (every step's output and time), history.csv,
# summary_plain.json, summary_tuned_balanced.json and postprocess.json. The run folder is
# OUT/run, or RUN_DIR when set (to keep checkpoints out of a folder that is copied back).
#
#   bash benchmarks/gpu_run.sh DATA OUT [train options, e.g. --epochs 12]
#
# DATA is a COVID-QU-Ex folder or a compact copy of it (`covidseg compact`, 54 MiB for Train and
# Val). Runs from the checkout without installing it (PYTHONPATH=src); on a machine that cannot
# reach a package index, put wheels of what it lacks (segmentation-models-pytorch, albumentations
# and their needs) in .whl/ and they are installed to /tmp/covidseg-site first.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash benchmarks/gpu_run.sh DATA OUT [train options]" >&2
  exit 2
fi
data=$1 out=$2
shift 2
cd "$(dirname "$0")/.."
run="${RUN_DIR:-$out/run}"
if [ -e "$run" ]; then
  echo "$run already exists; choose another OUT or RUN_DIR" >&2
  exit 2
fi
mkdir -p "$out"
log="$out/log.txt"
site=""
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/covidseg-site .whl/*.whl
  site=/tmp/covidseg-site
fi
export PYTHONPATH="$PWD/src${site:+:$site}${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export COVIDSEG_CACHE_DIR="${COVIDSEG_CACHE_DIR:-/tmp/covidseg-cache}"

step() {
  local name=$1
  shift
  local t0=$SECONDS
  echo "== $name: covidseg $*" | tee -a "$log"
  python3 -m covidseg "$@" 2>&1 | tee -a "$log"
  echo "== $name took $((SECONDS - t0)) s" | tee -a "$log"
}

python3 - <<'EOF' 2>&1 | tee "$log"
import torch
print("torch", torch.__version__, "| cuda", torch.cuda.is_available(),
      "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
EOF
step train train --data "$data" --out "$run" --preset gpu --no-progress "$@"
step evaluate-plain evaluate "$run" --split Val --no-postprocess --no-progress
cp "$run/eval/Val-untuned/summary.json" "$out/summary_plain.json"
step tune tune "$run" --metric balanced --no-progress
cp "$run/postprocess.json" "$out/postprocess.json"
step evaluate-tuned evaluate "$run" --split Val --no-progress
cp "$run/eval/Val/summary.json" "$out/summary_tuned_balanced.json"
cp "$run/history.csv" "$out/history.csv"
