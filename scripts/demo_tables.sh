#!/usr/bin/env bash
# The demo's data with the tiny chain trained to fixed step counts (no wall-clock budget cuts it
# short, so two runs of the same code give the same bytes), then the sha256 of every staged,
# quarantined and published Parquet file: compare two checkouts before and after a refactor.
#   scripts/demo_tables.sh CHECKOUT OUT_DIR   (run from a checkout with .venv, or set PY=python)
set -euo pipefail
REPO=$1; OUT=$2; rm -rf $OUT; mkdir -p $OUT
export PYTHONPATH=$REPO OMP_NUM_THREADS=1 PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1 PREFECT_HOME=$OUT/prefect
PY=${PY:-$(pwd)/.venv/bin/python}
cd $REPO
$PY -c "from flows.cli import main; main()" --data-dir $OUT/data import online-retail data/sample/online_retail_sample.parquet
$PY scripts/demo_bad_rows.py $OUT/data
$PY - $OUT/data <<'PYEOF'
import sys
from datetime import date
from pathlib import Path
try:
    from prodassoc_core.models import chain, serving
    from prodassoc_core.pipeline import retrain
    from prodassoc_core.ops.settings import Settings
except ImportError:
    from prodassoc_core import chain, retrain, serving
    from prodassoc_core.settings import Settings
s = Settings(data_dir=Path(sys.argv[1]), training=chain.tiny_training_config(0).model_copy(update={"max_minutes": 120}))
r = retrain.train_models(s, date(2011, 11, 8))
serving.promote(s, r.versions["student"], {"warm": "hybrid", "cold": "hybrid"}, "compare")
PYEOF
$PY -c "from flows.cli import main; main()" --data-dir $OUT/data run --as-of 2011-11-08
cd $OUT/data && find warehouse staging quarantine -name "*.parquet" | sort | xargs sha256sum > $OUT/hashes.txt
wc -l $OUT/hashes.txt
