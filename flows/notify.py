"""Tell someone that a flow run failed: a JSON POST to the webhook in ``FINETUNE_FAILURE_WEBHOOK``.

The URL comes from the flow process's environment, never from a run's parameters (security).
The body has ``text`` (Slack, Mattermost), ``flow_run_id``, ``flow_run_url``,
``failed_stages``, ``deployment`` and ``message``. Hand-written ``on_failure`` hook: a Prefect
automation needs a block and event triggers on the server, which a served local deployment
lacks. Send failures are logged, never raised.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, TaskRunFilter
from prefect.settings import PREFECT_UI_URL

from flows.settings import FLOW_RUN_PAGE

WEBHOOK_ENV = "FINETUNE_FAILURE_WEBHOOK"
logger = logging.getLogger(__name__)


def failed_stages(flow_run_id: Any) -> list[str]:
    """The flow run's failed or crashed task runs' names, in start order."""
    with get_client(sync_client=True) as client:
        found = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}),
            task_run_filter=TaskRunFilter(state={"type": {"any_": ["FAILED", "CRASHED"]}}),
        )
    found.sort(key=lambda run: run.start_time or run.expected_start_time or 0)
    return [run.name for run in found]


def failure_message(flow_name: str, flow_run: Any, message: str) -> dict[str, Any]:
    """The webhook body for ``flow_run`` (see the module's docstring)."""
    ui = (PREFECT_UI_URL.value() or "").rstrip("/")
    url = FLOW_RUN_PAGE.format(ui=ui, id=flow_run.id) if ui else str(flow_run.id)
    stages = failed_stages(flow_run.id)
    where = f"at stage {stages[-1]!r}" if stages else "before any stage"
    first_line = (message or "").strip().splitlines()[0] if (message or "").strip() else ""
    text = f"{flow_name} run {flow_run.name!r} failed {where}: {first_line} {url}"
    return {
        "text": text,
        "flow_run_id": str(flow_run.id),
        "flow_run_url": url,
        "failed_stages": stages,
        "deployment": str(flow_run.deployment_id or ""),
        "message": message,
    }


def notify_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """Flow ``on_failure`` hook: POST :func:`failure_message` to the webhook, when set."""
    url = os.environ.get(WEBHOOK_ENV)
    if not url:
        return
    try:
        body = failure_message(flow.name, flow_run, state.message or "")
        httpx.post(url, json=body, timeout=10).raise_for_status()
    except Exception as exc:  # a notification must not change the run's outcome
        logger.warning("failure notification to %s not sent: %s", WEBHOOK_ENV, exc)
