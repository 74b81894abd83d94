"""`make demo`'s one operator step: when the serving gate kept the freshly trained chain out (on the
32-day sample a few minutes of CPU training rarely beat the classic method on held-out data), serve
it by hand so the demo shows the hybrid, saying so. Never used by the nightly or by tests of the
gate: it is `prodassoc promote`, the documented operator override, tagged `prodassoc.gate=manual`.

    .venv/bin/python scripts/demo_serve.py DATA_DIR AS_OF
"""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path

from prodassoc_core.models import serving, tracking
from prodassoc_core.ops.settings import Settings


def main(data_dir: str, as_of: str) -> None:
    settings = Settings(data_dir=Path(data_dir))
    day = date.fromisoformat(as_of)
    found = serving.served_models(settings, day)
    if not isinstance(found, str):
        print(f"the serving gate promoted {found.student.uri}: {found.segments}")
        return
    latest = serving.latest_trained(settings, day)
    if isinstance(latest, str):
        sys.exit(f"nothing trained to serve: {latest}")
    tags = tracking.model_version(settings.tracking_uri, latest.student.name, latest.student.version).tags
    print(f"the serving gate kept {latest.student.uri} out ({tags.get('prodassoc.gate_reason', 'see train output')});")
    print("demo only: serving it by hand so you can see the hybrid (prodassoc promote, tagged manual)")
    serving.promote(settings, latest.student.version, {"warm": "hybrid", "cold": "hybrid"},
                    "make demo: shown by hand after the gate kept it out")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
