"""Settings from the environment: a PRODASSOC_ variable that names no setting is an operator's
typo, and must not be ignored without a word (pydantic-settings ignores it)."""

from __future__ import annotations

import pytest

from prodassoc_core.ops.settings import unknown_environment


def test_every_documented_variable_is_known():
    environ = {
        "PRODASSOC_DATA_DIR": "d", "PRODASSOC_ENGINE": "spark", "PRODASSOC_MINING__MIN_SUPPORT": "0.01",
        "PRODASSOC_TRAINING__SEED": "7", "PRODASSOC_TRAINING__GNN__MAX_MINUTES": "2",
        "PRODASSOC_TRAINING__ENCODER__KIND": "scratch", "PRODASSOC_TRAINING": "{}", "PRODASSOC_HYBRID": "{}",
        "PRODASSOC_SPARK__CONF": "{}", "PRODASSOC_BASKETS__NON_PRODUCT_CODES": "[]",
        "PRODASSOC_VALIDATION__MAX_CATALOG_SHRINK": "1", "prodassoc_mining__min_len": "2",  # any case, as read
        # not settings: the deployment's options, fault injection, the tests' and scripts' own
        "PRODASSOC_DEPLOY_CRON": "x", "PRODASSOC_FAULT": "x", "PRODASSOC_PRODUCTION_TESTS": "1",
        "PRODASSOC_BROWSER": "x", "PRODASSOC_SHARED_DIR": "x", "PRODASSOC_VENV": "x", "PRODASSOC_IMAGE": "x",
        "PRODASSOC_GPU_IMAGE": "x", "PRODASSOC_DATA_VOLUME": "x", "PRODASSOC_GPU_CHECK_TEST": "1",
        "PRODASSOC_TEST_PREFECT_SERVER": "x", "OTHER": "x",
    }
    assert unknown_environment(environ) == []


def test_a_misspelt_variable_is_named_with_what_was_meant():
    found = unknown_environment({
        "PRODASSOC_MINING__MIN_SUPORT": "0.1", "PRODASSOC_MINNING__MIN_SUPPORT": "0.1",
        "PRODASSOC_TRAINING__GNN__MAX_MINUTE": "1", "PRODASSOC_LOOKBACK": "30",
    })
    assert found == [
        "PRODASSOC_LOOKBACK (no setting lookback; did you mean lookback_days?)",
        "PRODASSOC_MINING__MIN_SUPORT (no setting mining.min_suport; did you mean min_support?)",
        "PRODASSOC_MINNING__MIN_SUPPORT (no setting minning; did you mean mining?)",
        "PRODASSOC_TRAINING__GNN__MAX_MINUTE (no setting training.gnn.max_minute; did you mean max_minutes?)",
    ]


def test_flows_refuse_a_misspelt_variable_too(monkeypatch):
    """The flows read their settings with from_environment when a worker starts them."""
    import pytest

    from prodassoc_core.ops.settings import from_environment

    monkeypatch.setenv("PRODASSOC_MINING__MIN_SUPPORT", "0.02")
    assert from_environment().mining.min_support == 0.02
    monkeypatch.setenv("PRODASSOC_ASSOCIATIONS__TOPK", "5")
    with pytest.raises(ValueError, match=r"PRODASSOC_ASSOCIATIONS__TOPK \(no setting associations.topk; did you mean top_k"):
        from_environment()


def test_a_data_dir_under_home_is_the_home_directorys(monkeypatch, tmp_path):
    from pathlib import Path

    from prodassoc_core.ops.settings import Settings

    monkeypatch.setenv("HOME", str(tmp_path))
    assert Settings(data_dir="~/shop").data_dir == tmp_path / "shop"
    monkeypatch.setenv("PRODASSOC_DATA_DIR", "~/shop2")
    assert Settings().data_dir == tmp_path / "shop2"
    assert Settings(data_dir=Path("rel")).data_dir == Path("rel")


def test_the_spark_master_is_one_spark_accepts():
    from pydantic import ValidationError

    from prodassoc_core.ops.settings import SparkConfig

    for master in ("local", "local[2]", "local[*]", "local[4,2]", "local-cluster[2,1,1024]", "spark://h:7077",
                   "spark://a:7077,b:7077", "yarn", "k8s://https://k8s.example:443", " yarn "):
        assert SparkConfig(master=master).master == master.strip()
    for master in ("spark//h:7077", "spark://h", "spark://h:7077/", "lokal[2]", "local[0]", "local[x]", "mesos://h:5050",
                   "yarn-cluster", ""):
        with pytest.raises(ValidationError, match="is not a Spark master URL"):
            SparkConfig(master=master)


def test_the_spark_driver_memory_is_a_jvm_size():
    """Spark hands it to the JVM as -Xmx: '2gb' is refused here, not by a JVM that never starts."""
    from pydantic import ValidationError

    from prodassoc_core.ops.settings import SparkConfig

    assert [SparkConfig(driver_memory=m).driver_memory for m in ("512m", "2g", "2G", "1t", " 8g")] == [
        "512m", "2g", "2G", "1t", "8g"]
    for memory in ("2gb", "2", "0g", "g", "2 g", "-1g"):
        with pytest.raises(ValidationError, match="is not a JVM memory size"):
            SparkConfig(driver_memory=memory)
