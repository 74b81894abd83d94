"""Discover (ingest step 1): what has landed, and what lies where it will not be ingested.

The landing layout (``<landing>/catalog/*.parquet`` snapshots, ``<landing>/transactions/
dt=YYYY-MM-DD/*.parquet``), the file's identity (its path relative to landing and its sha256),
and the data outside a partition that fails the run (``misplaced``). Reads directory listings
and file bytes only; writes nothing.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from prodassoc_core.data import contracts as c

PARTITION_NAME = re.compile(r"dt=\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class Landed:
    """One landed file."""

    table: str
    path: Path
    rel: str  # path relative to landing, POSIX separators: the manifest's `file`
    partition: str  # YYYY-MM-DD for transactions, the file stem for catalog snapshots


def landed(landing: Path, path: Path, table: str, partition: str) -> Landed:
    return Landed(table, path, path.relative_to(landing).as_posix(), partition)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def visible_parquet(directory: Path) -> list[Path]:
    """Parquet files in ``directory``, sorted; hidden/temporary ones (``.x``, ``_x``) skipped."""
    if not directory.is_dir():
        return []
    return sorted(
        p for p in directory.glob("*.parquet") if p.is_file() and not p.name.startswith((".", "_"))
    )


def partition_date(name: str) -> date | None:
    """The date of a ``dt=YYYY-MM-DD`` directory name, exactly that form; None otherwise."""
    if not PARTITION_NAME.fullmatch(name):
        return None
    try:
        return date.fromisoformat(name[3:])
    except ValueError:
        return None


def partition_dirs(root: Path) -> list[tuple[date, Path]]:
    """``dt=YYYY-MM-DD`` directories under ``root``, by date; other names are skipped (see ``misplaced``)."""
    out = []
    if not root.is_dir():
        return out
    for d in sorted(root.glob("dt=*")):
        day = partition_date(d.name)
        if d.is_dir() and day is not None:
            out.append((day, d))
    return out


def misplaced(root: Path) -> list[Path]:
    """Entries of a landing table directory that look like data but are outside a partition.

    Directories not named ``dt=YYYY-MM-DD`` and Parquet files directly under ``root``;
    hidden and temporary names (``.x``, ``_x``) and other files are not data.
    """
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.iterdir()):
        if p.name.startswith((".", "_")):
            continue
        if p.is_dir() and partition_date(p.name) is None:
            out.append(p)
        elif p.is_file() and p.suffix == ".parquet":
            out.append(p)
    return out


def current_snapshot(landing: Path) -> Landed | None:
    """The current catalog snapshot (the last by name), or None when none has landed."""
    snapshots = visible_parquet(landing / c.CATALOG.name)
    if not snapshots:
        return None
    return landed(landing, snapshots[-1], c.CATALOG.name, snapshots[-1].stem)


@dataclass
class LandedTransactions:
    """The transactions landing zone as one run sees it."""

    pending: dict[str, list[Landed]] = field(default_factory=dict)  # day -> its files, days before as_of
    deferred: int = 0  # files dated on/after as_of
    misplaced: list[str] = field(default_factory=list)  # one problem per entry outside a partition

    @property
    def files(self) -> list[Landed]:
        """The pending files in partition order."""
        return [file for files in self.pending.values() for file in files]


def find_transactions(landing: Path, as_of: date) -> LandedTransactions:
    """Transaction files of partitions dated before ``as_of``; later ones counted as deferred."""
    root = landing / c.TRANSACTIONS.name
    found = LandedTransactions()
    for path in misplaced(root):
        found.misplaced.append(
            f"{path.relative_to(landing).as_posix()}: not in a dt=YYYY-MM-DD partition directory of "
            f"{root}; its files are not ingested (move them to dt=<order date>/)"
        )
    for day, directory in partition_dirs(root):
        files = visible_parquet(directory)
        if day >= as_of:
            found.deferred += len(files)
            continue
        found.pending[day.isoformat()] = [landed(landing, p, c.TRANSACTIONS.name, day.isoformat()) for p in files]
    return found
