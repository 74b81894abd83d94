#!/usr/bin/env bash
# GPU check (issue 15 item 5): train every stage on Online Retail in bf16 within 8 minutes and print
# examples/s, tokens/s, peak GPU memory and MFU per stage, then the evaluation harness's table.
#
#   scripts/gpu_check.sh                 # on a CUDA machine: --device cuda, --max-minutes 8
#   scripts/gpu_check.sh --cpu-dry-run   # anywhere: the same steps on the CPU, tiny encoder, ~30 s budget
#
# Python: $PRODASSOC_VENV, else ./.venv, else ../main/.venv if present; otherwise it creates ./.venv and
# installs the project with pip from whatever index pip is configured for (pip.conf / PIP_INDEX_URL;
# the machine may have no other network). A CUDA torch must come from that index (e.g.
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cu126) — the CPU wheel cannot use the GPU.
# Data: $GPU_CHECK_DATA, else ../shared/data/online_retail (both Online Retail files) if present, else (always with --cpu-dry-run) the shipped sample
# data/sample/online_retail_sample.parquet. Everything is written under a fresh scratch data directory
# ($GPU_CHECK_DIR, default a mktemp directory), never the project's own.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
DRY=0
for arg in "$@"; do
  case "$arg" in
    --cpu-dry-run) DRY=1 ;;
    *) echo "usage: scripts/gpu_check.sh [--cpu-dry-run]" >&2; exit 2 ;;
  esac
done

if [ -n "${PRODASSOC_VENV:-}" ]; then VENV=$PRODASSOC_VENV
elif [ -x .venv/bin/python ]; then VENV=.venv
elif [ -x ../main/.venv/bin/python ]; then VENV=../main/.venv
else
  VENV=.venv
  echo "gpu_check: creating $VENV (pip, configured index)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -e .
fi
PY="$VENV/bin/python"
PRODASSOC=("$PY" -m flows.cli)

OR_DIR=${GPU_CHECK_DATA:-../shared/data/online_retail}
if [ "$DRY" = 0 ] && [ -d "$OR_DIR" ] && ls "$OR_DIR"/*.parquet >/dev/null 2>&1; then
  DATA=("$OR_DIR"/*.parquet); AS_OF=2011-09-01; TEST_END=2011-12-10
else
  DATA=(data/sample/online_retail_sample.parquet); AS_OF=2011-11-08; TEST_END=2011-12-10
fi
WORK=${GPU_CHECK_DIR:-$(mktemp -d -t prodassoc-gpu-check-XXXX)}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PRODASSOC_DATA_DIR="$WORK" HF_HUB_OFFLINE=1
export PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1 TOKENIZERS_PARALLELISM=false
export PREFECT_HOME="$WORK/prefect"

if [ "$DRY" = 1 ]; then
  DEVICE=cpu; MINUTES=${GPU_CHECK_MINUTES:-0.5}; METHODS=count,student
  # the tests' tiny scratch BERT (mlm.TINY_ENCODER): the pretrained MiniLM is minutes on a CPU
  export PRODASSOC_TRAINING__ENCODER__KIND=scratch PRODASSOC_TRAINING__ENCODER__VOCAB_SIZE=500 \
    PRODASSOC_TRAINING__ENCODER__HIDDEN=64 PRODASSOC_TRAINING__ENCODER__LAYERS=2 PRODASSOC_TRAINING__ENCODER__HEADS=2 \
    PRODASSOC_TRAINING__ENCODER__INTERMEDIATE=128 PRODASSOC_TRAINING__ENCODER__MAX_LENGTH=32 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
else
  # the harness rows that say what the GPU-trained models add; every method (GPU_CHECK_METHODS=all) took
  # ~60 s each on an H200 node, most of it publishing and scoring on its CPUs (docs/performance.md)
  DEVICE=cuda; MINUTES=${GPU_CHECK_MINUTES:-8}; METHODS=${GPU_CHECK_METHODS:-count,auto,served,student,gnn,hybrid}
  [ "$METHODS" = all ] && METHODS=""
  "$PY" -c "import torch, sys; ok = torch.cuda.is_available(); print('gpu_check: torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name() if ok else 'NO GPU'); sys.exit(0 if ok else 3)" \
    || { echo "gpu_check: torch sees no CUDA device (a CPU wheel?); use --cpu-dry-run or install a CUDA torch" >&2; exit 3; }
fi
echo "gpu_check: data ${DATA[*]}, as_of $AS_OF, device $DEVICE, budget $MINUTES min, work dir $WORK"

"${PRODASSOC[@]}" import online-retail "${DATA[@]}" >/dev/null
t0=$(date +%s)
"${PRODASSOC[@]}" train --as-of "$AS_OF" --seed 0 --device "$DEVICE" --max-minutes "$MINUTES"
echo "gpu_check: train took $(( $(date +%s) - t0 )) s (budget $MINUTES min)"
echo
echo "## stages"
"$PY" scripts/gpu_check_report.py --as-of "$AS_OF" --seed 0
echo
echo "## harness (prodassoc evaluate)"
# the first training in the scratch store has no champion to beat: its models are promoted and evaluated
"${PRODASSOC[@]}" evaluate --as-of "$AS_OF" --end "$TEST_END" ${METHODS:+--methods "$METHODS"}
echo "gpu_check: done ($WORK)"
