"""Land a till export with a handful of realistic bad rows next to the demo sample, so that
`make demo` shows quarantine at work: each bad row is quarantined with its rule, the good rows of
the same file are accepted, and the counts reconcile.

    .venv/bin/python scripts/demo_bad_rows.py DATA_DIR
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

DAY = "2011-11-07"  # the sample's last landed day
ROWS = [
    # order_id, product_id, quantity, unit_price, customer_id, ordered_at, why
    ("581990", "22423", 2, 12.75, "13047", datetime(2011, 11, 7, 9, 15), "good: REGENCY CAKESTAND 3 TIER"),
    ("581990", "85123A", 6, 2.95, "13047", datetime(2011, 11, 7, 9, 15), "good: WHITE HANGING HEART T-LIGHT HOLDER"),
    ("581991", "22423", 0, 12.75, "13047", datetime(2011, 11, 7, 9, 40), "bad: zero quantity"),
    ("581992", "99999Z", 4, 1.25, "17850", datetime(2011, 11, 7, 10, 5), "bad: product not in the catalog"),
    ("581993", "85123A", 3, -2.95, "17850", datetime(2011, 11, 7, 10, 20), "bad: negative price"),
    ("581994", "22423", 1, 12.75, "14911", datetime(2011, 11, 6, 23, 55), "bad: ordered the day before its partition"),
    ("", "85123A", 2, 2.95, "14911", datetime(2011, 11, 7, 11, 0), "bad: empty order id"),
    ("581995", "85123A", 250_000, 2.95, "12748", datetime(2011, 11, 7, 11, 30), "bad: quantity out of range"),
]


def main(data_dir: str) -> None:
    out = Path(data_dir) / "landing" / "transactions" / f"dt={DAY}" / "till-export.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    columns = list(zip(*ROWS))
    table = pa.table({
        "order_id": pa.array(columns[0], pa.string()),
        "product_id": pa.array(columns[1], pa.string()),
        "quantity": pa.array(columns[2], pa.int64()),
        "unit_price": pa.array(columns[3], pa.float64()),
        "customer_id": pa.array(columns[4], pa.string()),
        "ordered_at": pa.array(columns[5], pa.timestamp("us")),
    })
    pq.write_table(table, out)
    bad = sum(1 for r in ROWS if r[-1].startswith("bad"))
    print(f"landed {out}: {len(ROWS)} rows, {bad} of them bad on purpose (quarantined with their rule)")


if __name__ == "__main__":
    main(sys.argv[1])
