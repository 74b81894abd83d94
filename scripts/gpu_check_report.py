"""The stage table of scripts/gpu_check.sh: examples/s, tokens/s, peak GPU memory and MFU per stage,
read from the results files `prodassoc train` wrote for ``--as-of`` under the data directory.

    python scripts/gpu_check_report.py --as-of YYYY-MM-DD   (PRODASSOC_* settings as for `prodassoc train`)

MFU (encoder stages: mlm, teacher, student) = 6 x parameters x tokens/s / the GPU's peak dense
bf16 FLOP/s (table below, no sparsity); tokens are the token positions fed, padding included.
6 x N x T is the usual training estimate (forward 2NT + backward 4NT); it ignores attention's
sequence-length term, small at these lengths. On the CPU (``--cpu-dry-run``) MFU is not computed.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Peak dense bf16 tensor-core FLOP/s (vendor datasheets, no structured sparsity), by name substring.
PEAK_BF16 = [
    ("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("GH200", 989e12), ("B200", 2250e12),
    ("A100", 312e12), ("A10G", 70e12), ("A10", 125e12), ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12),
    ("A6000", 155e12), ("4090", 165e12), ("V100", 0.0), ("T4", 0.0),  # V100/T4: no bf16 tensor cores
]
STAGES = ("mlm", "teacher", "student", "gnn")


def peak_flops(name: str) -> float | None:
    for key, flops in PEAK_BF16:
        if key.lower() in name.lower():
            return flops or None
    return None


def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def rows(models: Path) -> list[dict]:
    out = []
    for stage in STAGES:
        path = models / stage / ("mlm_results.json" if stage == "mlm" else f"{stage}_results.json")
        if not path.is_file():
            out.append({"stage": stage, "missing": str(path)})
            continue
        r = json.loads(path.read_text())
        out.append({"stage": stage, **r})
    return out


def table(results: list[dict], gpu: str | None) -> list[str]:
    peak = peak_flops(gpu) if gpu else None
    lines = [f"GPU: {gpu or 'none (CPU dry run)'}; peak dense bf16: {f'{peak / 1e12:.0f} TFLOP/s' if peak else 'n/a'}",
             "| stage | steps | stop | examples/s | tokens/s | peak GPU memory | MFU |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        if "missing" in r:
            lines.append(f"| {r['stage']} | - | not trained ({r['missing']}) | - | - | - | - |")
            continue
        if r["stage"] == "gnn":
            steps, rate, tokens = f"{r.get('epochs', '?')} epochs", f"{r.get('edges_per_s', 0):,.0f} edges/s", "-"
        else:
            steps, rate = f"{r['steps']}/{r['total_steps']}", f"{r['examples_per_s']:,.1f}"
            tokens = f"{r.get('tokens_per_s', 0):,.0f}"
        mem = r.get("peak_memory_bytes")
        mem_s = f"{mem / 2**30:.2f} GiB" if mem else "n/a"
        mfu = "-"
        if r["stage"] != "gnn":
            mfu = (f"{100 * 6 * r.get('parameters', 0) * r.get('tokens_per_s', 0) / peak:.1f} %" if peak else "n/a")
        lines.append(f"| {r['stage']} | {steps} | {r.get('stop_reason', '?')} | {rate} | {tokens} | {mem_s} | {mfu} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--as-of", type=date.fromisoformat, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from prodassoc_core.ops import Settings
    from prodassoc_core.pipeline import retrain

    settings = Settings()
    settings = settings.model_copy(update={"training": settings.training.model_copy(update={"seed": args.seed})})
    root = settings.data_dir / "models" / f"as_of={args.as_of.isoformat()}"
    found = sorted(root.glob("cfg-*"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    models = found[-1] if found else retrain.models_dir(settings, args.as_of)
    print(f"models: {models}")
    for line in table(rows(models), gpu_name()):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
