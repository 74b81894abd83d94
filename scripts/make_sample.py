"""Cut the shipped demo sample from UCI Online Retail.

Keeps every invoice line of the 2010-2011 file with InvoiceDate in
[2011-10-01 00:00, 2011-11-08 00:00) (October 2011 plus the first week of November),
with the source columns and types unchanged, so the demo runs the real importer.

    python scripts/make_sample.py [--source DIR_OR_FILE] [--output PATH]

The source defaults to $PRODASSOC_SHARED_DIR/data or ../shared/data next to the repository.
"""

from __future__ import annotations

import argparse
import os
from datetime import datetime
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
SOURCE_NAME = "online_retail/online_retail_2010_2011.parquet"
START, END = datetime(2011, 10, 1), datetime(2011, 11, 8)  # [START, END)
OUTPUT = REPO / "data" / "sample" / "online_retail_sample.parquet"


def default_source() -> Path:
    candidates = []
    if os.environ.get("PRODASSOC_SHARED_DIR"):
        candidates.append(Path(os.environ["PRODASSOC_SHARED_DIR"]) / "data")
    candidates.append(REPO.parent / "shared" / "data")
    for c in candidates:
        if (c / SOURCE_NAME).is_file():
            return c / SOURCE_NAME
    raise SystemExit(f"cannot find {SOURCE_NAME} under {[str(c) for c in candidates]}; pass --source")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, help="the 2010-2011 Parquet file, or the shared data dir")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    source = args.source or default_source()
    if source.is_dir():
        source = source / SOURCE_NAME

    table = pq.read_table(source)
    when = table.column("InvoiceDate")
    keep = pc.and_(pc.greater_equal(when, START), pc.less(when, END))
    sample = table.filter(keep).replace_schema_metadata(None)  # source order and columns kept

    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(args.output.name + ".tmp")
    pq.write_table(sample, tmp, compression="zstd", compression_level=19)
    os.replace(tmp, args.output)
    days = len(pc.unique(pc.strftime(sample.column("InvoiceDate"), format="%Y-%m-%d")))
    print(
        f"{sample.num_rows:,} lines, {days} days, {len(pc.unique(sample.column('StockCode'))):,} stock codes, "
        f"{args.output.stat().st_size / 1e6:.2f} MB -> {args.output}"
    )


if __name__ == "__main__":
    main()
