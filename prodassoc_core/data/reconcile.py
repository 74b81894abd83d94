"""Reconcile (ingest step 4): every landed row is counted once.

Two checks of the counts (validation returns as many rows as were read; a file's rows read are
its rows accepted plus quarantined) and the rule for landed content that is already staged: a
transactions file with the same bytes as another file whose rows were accepted and are still
staged is ``covered`` by it and recorded as a duplicate instead of being ingested again.
"""

from __future__ import annotations

from pathlib import Path

from prodassoc_core.data.landing import Landed, sha256
from prodassoc_core.data.loading import UNREADABLE, Loaded
from prodassoc_core.data.staging import footer_rows, output_dir, output_name


def check_validated_rows(outcome, n_rows: int) -> None:
    """Validation returned every row it was given, each accepted or quarantined."""
    if outcome.accepted.height + outcome.quarantined.height != n_rows:
        raise AssertionError(f"validation returned {outcome.rows_read} rows for {n_rows} read")


def check_file_counts(loaded: Loaded, accepted: int, quarantined: int) -> None:
    """A readable file's rows read are its rows accepted plus its rows quarantined."""
    if loaded.status != UNREADABLE and loaded.rows != accepted + quarantined:
        raise AssertionError(
            f"{loaded.file.rel}: rows_read {loaded.rows} != accepted {accepted} + quarantined {quarantined}"
        )


def covering(
    file: Landed, sha: str, shas: dict[str, str], candidates: list[dict], landing: Path, staging: Path
) -> str | None:
    """The file whose accepted, staged rows already hold everything ``file`` could add; None if none.

    ``candidates`` are the manifest's ingested rows with accepted rows and sha256 ``sha``;
    ``shas`` caches landed files' sha256 by manifest ``file`` (filled in here as needed).
    Another file with the same sha256 covers ``file`` when it was ingested with accepted
    rows that are still staged, its landed bytes (if it is still landed) are unchanged, and
    either it lies in the same partition (same verdict row by row) or none of its rows were
    quarantined (its rows are all dated its own partition, so in another one they would
    all fail ``in_partition``). Content quarantined elsewhere claims nothing.
    """
    for row in candidates:
        if row["file"] == file.rel or (row["partition"] != file.partition and row["rows_quarantined"] != 0):
            continue
        original = Landed(row["table"], landing / row["file"], row["file"], row["partition"])
        if not (output_dir(staging, original) / output_name(original, sha)).is_file():
            continue
        if original.path.is_file():
            if row["file"] not in shas:
                shas[row["file"]] = sha256(original.path)
            if shas[row["file"]] != sha:
                continue
        return row["file"]
    return None


def landed_rows(path: Path) -> int:
    """Rows of a landed Parquet file, from its footer (0 if unreadable: the bytes are those of a
    readable file, so it cannot happen)."""
    return footer_rows(path) or 0


def duplicate_detail(sha: str, rows: int, original: str) -> str:
    return f"same content (sha256 {sha[:8]}, {rows} rows) as {original}, whose rows were accepted; not ingested again"
