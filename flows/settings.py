"""What a deployment fixes when it is made, out of reach of whoever creates its flow runs.

Anyone who reaches the Prefect API can create a flow run with any parameters, so the project
directory, the keys a run may override and the timeouts come from here: ``flows.deploy
serve`` puts one :class:`DeploymentSettings` per deployment in ``FINETUNE_FLOW_DEPLOYMENTS``
(inherited by its flow-run processes). A deployment with no entry accepts no overrides; a
direct call uses the entry ``""``, else allows every override.
"""

from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SETTINGS_ENV = "FINETUNE_FLOW_DEPLOYMENTS"
DIRECT = ""  # the entry for direct calls (no deployment)
# Keys a pattern never covers (the servers the stages talk to, the code they load).
SENSITIVE = ("tracking.*", "tune.storage", "model.name_or_path")
# Seconds per stage, so a hung `dvc repro` cannot hold the nightly run for ever.
DEFAULT_TIMEOUTS = {"tune": 6 * 3600, "train": 6 * 3600}
DEFAULT_TIMEOUT = 3600
# The flow-run page (the failure notification links it): Prefect UI's route.
FLOW_RUN_PAGE = "{ui}/runs/flow-run/{id}"


class RunRefused(ValueError):
    """A flow run asked for what its deployment does not allow."""


class DeploymentSettings(BaseModel):
    """One deployment's fixed settings: ``project`` (default: the flow file's checkout),
    ``allow`` (keys or patterns a run may override, ``preset`` for presets; patterns never
    cover :data:`SENSITIVE`; ``None``, direct calls only: anything) and ``timeouts`` (seconds
    per stage name or ``experiment``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    project: str | None = None
    allow: tuple[str, ...] | None = ()
    timeouts: dict[str, float] = Field(default_factory=dict)

    def timeout(self, stage: str) -> float:
        return self.timeouts.get(stage, DEFAULT_TIMEOUTS.get(stage, DEFAULT_TIMEOUT))

    def check_run(self, overrides: dict[str, Any], preset: str | None, who: str) -> None:
        """Raise RunRefused (refused and allowed keys) for an override or preset not allowed."""
        if self.allow is None:
            return
        refused = sorted(key for key in overrides if not self.allows(key))
        if preset is not None and "preset" not in self.allow:
            refused.insert(0, f"preset={preset}")
        if refused:
            allowed = ", ".join(self.allow) or "none"
            raise RunRefused(
                f"{who} does not allow {', '.join(refused)} (allowed: {allowed}; chosen when "
                "the deployment is made: finetune deploy serve --allow KEY)"
            )

    def allows(self, key: str) -> bool:
        if self.allow is None or key in self.allow:
            return True
        if any(fnmatch.fnmatchcase(key, pattern) for pattern in SENSITIVE):
            return False
        return any(fnmatch.fnmatchcase(key, pattern) for pattern in self.allow)


def settings_env(table: dict[str, DeploymentSettings]) -> dict[str, str]:
    """The environment variable handing ``table`` (name -> settings) to the flow runs."""
    return {SETTINGS_ENV: json.dumps({k: v.model_dump(mode="json") for k, v in table.items()})}


def current(deployment: str | None) -> tuple[DeploymentSettings, str]:
    """The running deployment's settings (``None``: a direct call) and its name for messages."""
    table = json.loads(os.environ.get(SETTINGS_ENV) or "{}")
    if deployment is None:
        entry = table.get(DIRECT, {"allow": None})
        return DeploymentSettings.model_validate(entry), "this call"
    entry = table.get(deployment, {})
    return DeploymentSettings.model_validate(entry), f"deployment {deployment!r}"


def project_of(settings: DeploymentSettings, default: Path) -> Path:
    """The project directory the settings fix (``default``: the flow file's checkout)."""
    return Path(settings.project).resolve() if settings.project else default
