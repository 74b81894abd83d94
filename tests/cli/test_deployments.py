from deployments.local import nightly_deployment


def test_nightly_deployment_schedule_and_single_concurrency():
    d = nightly_deployment("30 1 * * *", "Europe/London")
    (schedule,) = d.schedules
    assert schedule.schedule.cron == "30 1 * * *"
    assert schedule.schedule.timezone == "Europe/London"
    assert d.parameters == {"timezone": "Europe/London"}
    assert d.concurrency_limit == 1



def test_every_deployed_flow_parameter_is_described_for_the_run_form():
    """The Prefect UI's run form shows each parameter's description (from the flow's docstring)."""
    from prefect.utilities.callables import parameter_schema

    from flows.nightly import backfill, nightly, scheduled_nightly
    from flows.train import train

    for f in (nightly, backfill, scheduled_nightly, train):
        props = parameter_schema(f.fn).properties
        missing = [name for name, p in props.items() if not p.get("description")]
        assert not missing, f"{f.name}: parameters without a description: {missing}"
    assert "YYYY-MM-DD" in parameter_schema(nightly.fn).properties["as_of"]["description"]


def test_the_run_forms_show_what_an_operator_sets_not_the_settings_object(tmp_path):
    """Deployed run forms leave out ``settings`` (the worker's environment supplies it) and keep
    every other parameter, each described."""
    from deployments.production import DeployConfig, deployments
    from prodassoc_core.ops import TrainingConfig

    forms = {d.name: d._parameter_openapi_schema for d in deployments(DeployConfig(), tmp_path, TrainingConfig())}
    forms["local-nightly"] = nightly_deployment()._parameter_openapi_schema
    assert set(forms["backfill"].properties) == {"start", "end", "force"}
    assert {"as_of", "timezone"} <= set(forms["nightly"].properties) and "seed" in forms["train"].properties
    for name, schema in forms.items():
        assert "settings" not in schema.properties, name
        assert not schema.definitions or "Settings" not in schema.definitions, name
        assert all(p.get("description") for p in schema.properties.values()), name


def test_the_spark_variant_runs_dated_runs_on_the_spark_engine(monkeypatch):
    """PRODASSOC_DEPLOY_ENGINE=spark: nightly and backfill carry the engine (and master) in their
    job variables (docs/spark.md); train does not; the default deploys the local engine."""
    from pathlib import Path

    from deployments.production import DeployConfig, deployments
    from prodassoc_core.ops import TrainingConfig

    monkeypatch.setenv("PRODASSOC_DEPLOY_ENGINE", "spark")
    monkeypatch.setenv("PRODASSOC_DEPLOY_SPARK_MASTER", "yarn")
    nightly, backfill, train = deployments(DeployConfig(), Path("/srv/prodassoc"), TrainingConfig())
    for d in (nightly, backfill):
        assert d.job_variables["env"]["PRODASSOC_ENGINE"] == "spark"
        assert d.job_variables["env"]["PRODASSOC_SPARK__MASTER"] == "yarn"
    assert "PRODASSOC_ENGINE" not in train.job_variables["env"]
    monkeypatch.delenv("PRODASSOC_DEPLOY_ENGINE")
    local = deployments(DeployConfig(), Path("/srv/prodassoc"), TrainingConfig())[0]
    assert "PRODASSOC_ENGINE" not in local.job_variables["env"]
