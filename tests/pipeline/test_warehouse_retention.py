"""Warehouse retention (``keep_published_days``): after a run commits, run dates older than the kept
history lose their tables, commit markers, run folders and report pages, and the views follow;
a date being rerun is left alone, and a run the retention would undo is refused before it starts."""

from __future__ import annotations

import shutil
from datetime import date, timedelta

import duckdb
import pytest

from flows.cli import main
from prodassoc_core.data import warehouse
from prodassoc_core.data.contracts import ALL_TABLES, ASSOCIATION_RULES
from prodassoc_core.ops import locks
from prodassoc_core.ops.settings import Settings
from prodassoc_core.pipeline import RetentionError, stages

from conftest import land

KEEP = 2


def _dates(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _traces(settings: Settings, day: date) -> list[str]:
    """What the warehouse and the data dir still hold of ``day``."""
    paths = [warehouse.partition_dir(settings.warehouse_dir, t, day) for t in [*ALL_TABLES, warehouse.RUNS_DIR]]
    paths += [settings.data_dir / "runs" / f"as_of={day.isoformat()}", stages.run_report_path(settings, day)]
    return [str(p.relative_to(settings.data_dir)) for p in paths if p.exists()]


def _view_dates(settings: Settings) -> list[str]:
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        rows = con.execute(f"SELECT DISTINCT run_date FROM {ASSOCIATION_RULES.name} ORDER BY 1").fetchall()
        latest = con.execute(f"SELECT max(run_date) FROM latest_{ASSOCIATION_RULES.name}").fetchone()[0]
    return [str(r[0]) for r in rows] + [f"latest {latest}"]


@pytest.fixture
def settings(tmp_path) -> Settings:
    s = Settings(data_dir=tmp_path / "data", keep_published_days=KEEP)
    land(s.landing_dir)  # 2024-01-01 .. 2024-01-06
    return s


def test_old_dates_go_after_each_commit_and_the_views_follow(settings):
    for day in _dates(date(2024, 1, 3), date(2024, 1, 5)):
        stages.run_nightly(settings, day)
    assert list(warehouse.committed_dates(settings.warehouse_dir)) == [date(2024, 1, 4), date(2024, 1, 5)]
    assert _traces(settings, date(2024, 1, 3)) == []
    assert _view_dates(settings) == ["2024-01-04", "2024-01-05", "latest 2024-01-05"]

    # a partition of a run that never committed (stopped part way), older than the kept history
    leftover = warehouse.partition_dir(settings.warehouse_dir, ASSOCIATION_RULES.name, date(2024, 1, 2))
    shutil.copytree(warehouse.partition_dir(settings.warehouse_dir, ASSOCIATION_RULES.name, date(2024, 1, 4)), leftover)
    # 2024-01-04 is being rerun while 2024-01-06 commits: it stays, and goes at the next commit
    with locks.run_lock(settings.locks_dir, date(2024, 1, 4)):
        stages.run_nightly(settings, date(2024, 1, 6))
    assert not leftover.exists()
    assert list(warehouse.committed_dates(settings.warehouse_dir)) == [date(2024, 1, d) for d in (4, 5, 6)]
    stages.run_nightly(settings, date(2024, 1, 7))
    assert list(warehouse.committed_dates(settings.warehouse_dir)) == [date(2024, 1, 6), date(2024, 1, 7)]
    for day in _dates(date(2024, 1, 2), date(2024, 1, 5)):
        assert _traces(settings, day) == [], day
    assert _traces(settings, date(2024, 1, 7)) == [
        *(f"warehouse/{t}/run_date=2024-01-07" for t in ALL_TABLES
          if warehouse.is_published(settings.warehouse_dir, t, date(2024, 1, 7))),
        "warehouse/_runs/run_date=2024-01-07", "runs/as_of=2024-01-07", "reports/nightly_as_of=2024-01-07.html",
    ]
    assert _view_dates(settings) == ["2024-01-06", "2024-01-07", "latest 2024-01-07"]
    assert warehouse.damaged_dates(settings.warehouse_dir) == {}


def test_a_run_the_retention_would_undo_is_refused_before_it_starts(settings, capsys):
    for day in (date(2024, 1, 5), date(2024, 1, 6)):
        stages.run_nightly(settings, day)
    expected = (r"as_of 2024-01-04 is outside the published history the warehouse keeps: keep_published_days=2 "
                r"keeps run dates after 2024-01-04 \(the newest being 2024-01-06\)")
    with pytest.raises(RetentionError, match=expected):
        stages.run_nightly(settings, date(2024, 1, 4))
    assert _traces(settings, date(2024, 1, 4)) == []
    # a backfill whose first date would go once its last is published
    with pytest.raises(RetentionError, match="as_of 2024-01-05 is outside"):
        stages.backfill_dates(settings, date(2024, 1, 5), date(2024, 1, 7), force=True)
    # already published dates are skipped, not refused
    assert stages.backfill_dates(settings, date(2024, 1, 5), date(2024, 1, 6)) == ([], [date(2024, 1, 5), date(2024, 1, 6)])

    data = ["--data-dir", str(settings.data_dir)]
    env = {"PRODASSOC_KEEP_PUBLISHED_DAYS": str(KEEP)}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        assert main([*data, "run", "--as-of", "2024-01-04"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "outside the published history the warehouse keeps" in err[0], err
        assert main([*data, "backfill", "--start", "2024-01-03", "--end", "2024-01-07"]) == 2
        assert "as_of 2024-01-03 is outside" in capsys.readouterr().err
    assert list(warehouse.committed_dates(settings.warehouse_dir)) == [date(2024, 1, 5), date(2024, 1, 6)]


def test_without_the_setting_every_date_is_kept(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    land(settings.landing_dir)
    for day in (date(2024, 1, 2), date(2024, 1, 7)):
        stages.run_nightly(settings, day)
    assert stages.retention_cutoff(settings, date(2024, 1, 7)) is None
    assert list(warehouse.committed_dates(settings.warehouse_dir)) == [date(2024, 1, 2), date(2024, 1, 7)]
