"""Serve the nightly flow on a schedule from this machine (the local, single-process setup).

    python -m deployments.local --cron "0 2 * * *" --timezone Europe/London

`flow.serve` registers the deployment with the Prefect API that ``PREFECT_API_URL``
points to (start one with ``prefect server start``) and runs scheduled and manually
triggered runs in this process. For work pools, workers, the backfill deployment and
the GPU pool see deployments/production.py (`prodassoc deploy`).
"""

from __future__ import annotations

import argparse

from prefect.schedules import Cron

from deployments.production import operator_form
from flows.nightly import scheduled_nightly


def nightly_deployment(cron: str = "0 2 * * *", timezone: str = "UTC"):
    """The `nightly` deployment: one run at a time, as_of = the scheduled date."""
    return operator_form(scheduled_nightly.to_deployment(
        name="nightly",
        schedule=Cron(cron, timezone=timezone),
        parameters={"timezone": timezone},
        concurrency_limit=1,
        tags=["prodassoc", "nightly"],
    ))


def main() -> None:
    from prefect import serve

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cron", default="0 2 * * *")
    parser.add_argument("--timezone", default="UTC")
    args = parser.parse_args()
    serve(nightly_deployment(args.cron, args.timezone))


if __name__ == "__main__":
    main()
