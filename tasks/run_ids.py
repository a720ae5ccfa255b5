"""The run id of a Prefect flow run, decided from the flow run itself: its name and its body agree without
sharing any state (a deployment's run passes no run id)."""

from __future__ import annotations

import uuid

from prefect.runtime import flow_run

from linreg.config import decide_run_id


def flow_run_id(given: str | None) -> str:
    """`given`, else this flow run's own id: its expected start time (UTC) and the first 4 hex digits of its
    (random) Prefect id, e.g. 20261123T021500Z-3f9a. The same answer every time it is asked in one flow run."""
    if given:
        return decide_run_id(given)
    return decide_run_id(None, at=flow_run.scheduled_start_time, token=uuid.UUID(str(flow_run.id)).hex[:4])
