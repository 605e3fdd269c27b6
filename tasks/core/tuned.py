"""The tune stage's best values over the ``train`` section (``reports/best_params.json``): the
precedence rule between them and ``params.yaml`` that the train stage applies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tasks.core.config import (
    TUNABLE_TRAIN_KEYS,
    Params,
    ParamsError,
    describe_errors,
    overlay_train,
)

BEST_PARAMS_FILE = "best_params.json"  # written by the tune stage into reports/, read by train


def apply_tuned_params(params: Params, best_params: Path | str) -> tuple[Params, dict[str, Any]]:
    """``params`` with the resolved ``train`` section, and its provenance (``params_source``,
    ``tuned_params``, and for a tuned run study, best trial and score).

    With ``tune.enabled`` and a finished search (``status: tuned``) in ``best_params``, its
    values replace the ``train`` keys they name; otherwise (or ``source: defaults``)
    ``params.yaml`` alone decides. ParamsError when ``best_params`` is unreadable or invalid.
    """
    path = Path(best_params)
    provenance: dict[str, Any] = {"params_source": "params.yaml", "tuned_params": {}}
    if not params.tune.enabled:
        return params, {**provenance, "reason": "tune.enabled is false"}
    if not path.is_file():
        return params, {**provenance, "reason": f"{path.name} not found (tune has not run)"}
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ParamsError(f"{path}: unreadable: {exc}") from None
    if not isinstance(found, dict) or found.get("status") != "tuned":
        status = found.get("status") if isinstance(found, dict) else None
        return params, {**provenance, "reason": f"{path.name}: status {status!r}, not 'tuned'"}
    if found.get("source") == "defaults":  # no tuned configuration beat params.yaml's values
        return params, {
            **provenance,
            "reason": f"{path.name}: source 'defaults': {found.get('reason')}",
            "study_name": found.get("study_name"),
            "best_trial": found.get("best_trial"),
            "best_value": found.get("best_value"),
            "metric": found.get("metric"),
        }
    values = found.get("params") or {}
    unknown = sorted(set(values) - set(TUNABLE_TRAIN_KEYS))
    if unknown:
        raise ParamsError(f"{path}: not tunable train keys: {', '.join(unknown)}")
    try:
        train = overlay_train(params.train, values)
    except ValidationError as exc:
        problems = "; ".join(describe_errors(exc, {}))
        raise ParamsError(f"{path}: tuned values are not valid train params: {problems}") from None
    return params.model_copy(update={"train": train}), {
        "params_source": "tune",
        "tuned_params": values,
        "study_name": found.get("study_name"),
        "best_trial": found.get("best_trial"),
        "best_value": found.get("best_value"),
        "metric": found.get("metric"),
    }
