"""Training folders over time: one training of a date at a time (its lock), and the folders of older
registered trainings removed once newer ones exist (retrain.tidy_trainings), never one in use."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from flows.cli import main
from prodassoc_core.data import warehouse
from prodassoc_core.models import chain
from prodassoc_core.ops import locks
from prodassoc_core.ops.settings import Settings
from prodassoc_core.pipeline import retrain

from conftest import land


def _training_folder(settings: Settings, day: date, registered: bool = True, cfg: str = "cfg-0123456789") -> Path:
    """A training's folder as train_models leaves it: a model file, and the marker once registered."""
    folder = settings.data_dir / "models" / f"as_of={day.isoformat()}" / cfg
    (folder / "student" / "model").mkdir(parents=True)
    (folder / "student" / "model" / "model.safetensors").write_bytes(b"\0" * 1000)
    if registered:
        (folder / retrain.REGISTERED_FILE).write_text("{}")
    return folder


def test_older_registered_trainings_go_and_the_rest_stays(tmp_path, caplog):
    settings = Settings(data_dir=tmp_path, keep_trainings=2)
    weeks = [date(2024, 1, d) for d in (7, 14, 21, 28)]
    folders = {d: _training_folder(settings, d) for d in weeks}
    other_cfg = _training_folder(settings, weeks[0], cfg="cfg-abcdefabcd")  # the same date, other settings
    failed = _training_folder(settings, date(2023, 12, 31), registered=False)  # a rerun's resume cache
    held = _training_folder(settings, date(2023, 12, 24))
    backfilled = _training_folder(settings, date(2023, 12, 17))  # the date just trained: stays, however old

    with locks.training_lock(settings.locks_dir, date(2023, 12, 24)):  # a training of that date in flight
        freed = retrain.tidy_trainings(settings, date(2023, 12, 17))

    assert freed == 3 * (1000 + len("{}"))  # weeks 7 and 14 (two folders for the 7th)
    assert not folders[weeks[0]].exists() and not other_cfg.exists() and not folders[weeks[1]].exists()
    assert not folders[weeks[0]].parent.exists()  # the date's folder too, once empty
    assert folders[weeks[2]].is_dir() and folders[weeks[3]].is_dir()  # the newest keep_trainings dates
    assert failed.is_dir() and held.is_dir() and backfilled.is_dir()
    assert "as_of=2023-12-24 kept, a training for it is in progress" in caplog.text
    assert "older registered trainings removed" in caplog.text


def test_a_folder_that_cannot_be_removed_is_logged_and_left(tmp_path, monkeypatch, caplog):
    settings = Settings(data_dir=tmp_path, keep_trainings=1)
    old, new = _training_folder(settings, date(2024, 1, 7)), _training_folder(settings, date(2024, 1, 14))

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(warehouse.shutil, "rmtree", refuse)
    assert retrain.tidy_trainings(settings, date(2024, 1, 14)) == 0
    assert old.is_dir() and new.is_dir()
    assert "training folders: " in caplog.text and "not removed" in caplog.text


def test_a_second_training_of_a_date_does_nothing_and_says_who_holds_it(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PRODASSOC_TRAINING__SEED", raising=False)
    settings = Settings(data_dir=tmp_path, training=chain.tiny_training_config(0))
    land(settings.landing_dir)
    day = date(2024, 1, 7)
    with locks.training_lock(settings.locks_dir, day):
        with pytest.raises(locks.TrainingLockedError, match=r"another training for as_of 2024-01-07 is in progress: "
                           r"lock .*train-2024-01-07.lock is held by pid \d+"):
            retrain.train_models(settings, day)
        # the command line says so before Prefect starts, with the locked exit code
        assert main(["--data-dir", str(tmp_path), "train", "--as-of", day.isoformat(), "--seed", "0"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another training for as_of 2024-01-07 is in progress" in err[0], err
    assert not (tmp_path / "models").exists() and not (tmp_path / "mlflow.db").exists()  # nothing was started
