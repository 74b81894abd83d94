"""The `train` deployment's flow-run command under torchrun (deployments.commands.torchrun_train):

    torchrun --standalone --nproc_per_node=<gpus> -m flows.torchrun_engine

Rank 0 executes the Prefect flow run as Prefect's own command does (``python -m prefect.engine``,
the run id in PREFECT__FLOW_RUN_ID): data, the chain, MLflow, the registry, the gate, the GNN.
Ranks 1.. read that run's parameters (as_of, seed, timezone) from the Prefect API and take part
in the DDP steps of MLM, teacher and student (``retrain.train_rank``); they write nothing. With
one GPU (``--nproc_per_node=1``) this is Prefect's command.
"""

from __future__ import annotations

import os
import runpy
import sys
from datetime import date
from uuid import UUID


def _rank_parameters(flow_run_id: UUID) -> tuple[date, int | None]:
    """(as_of, seed) of the flow run, as flows.train.train resolves them."""
    from zoneinfo import ZoneInfo

    from prefect import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
    params = run.parameters
    as_of = params.get("as_of")
    if as_of:
        as_of = date.fromisoformat(str(as_of))
    else:  # the scheduled date in the run's timezone (flows.nightly.scheduled_date)
        as_of = run.expected_start_time.astimezone(ZoneInfo(params.get("timezone") or "UTC")).date()
    return as_of, params.get("seed")


def main() -> None:
    from prodassoc_core.models.training import rank

    if rank() == 0:
        sys.argv = ["prefect.engine", *sys.argv[1:]]
        runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)
        return
    from prodassoc_core.ops import Settings
    from prodassoc_core.pipeline import retrain

    flow_run_id = UUID(sys.argv[1] if len(sys.argv) > 1 else os.environ["PREFECT__FLOW_RUN_ID"])
    as_of, seed = _rank_parameters(flow_run_id)
    settings = Settings()
    if seed is not None:
        settings = settings.model_copy(update={"training": settings.training.model_copy(update={"seed": int(seed)})})
    retrain.train_rank(settings, as_of)


if __name__ == "__main__":
    main()
