from deployments.local import nightly_deployment


def test_nightly_deployment_schedule_and_single_concurrency():
    d = nightly_deployment("30 1 * * *", "Europe/London")
    (schedule,) = d.schedules
    assert schedule.schedule.cron == "30 1 * * *"
    assert schedule.schedule.timezone == "Europe/London"
    assert d.parameters == {"timezone": "Europe/London"}
    assert d.concurrency_limit == 1

