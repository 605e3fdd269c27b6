"""What a deployment fixes when it is made, out of reach of whoever creates its flow runs.

Anyone who reaches the Prefect API can create a flow run with any parameters. So the flow
takes the project directory, the params keys a run may override and the stage timeouts
from here, never from its parameters: ``flows.deploy serve`` puts one
:class:`DeploymentSettings` per deployment name in its own environment
(``FINETUNE_FLOW_DEPLOYMENTS``, JSON), which the runner's flow-run processes inherit and a
run's parameters cannot change. A deployment with no entry there runs this checkout and
accepts no overrides. A direct call (``training_pipeline(...)`` in Python, ``finetune run
--flow``) is the caller's own process: it uses the entry ``""`` when present, else this
checkout with every override allowed.
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
# Keys a pattern (``*``, ``train.*``) never covers: each must be listed by its full name.
# They name the servers the stages talk to and the code the stages load.
SENSITIVE = ("tracking.*", "tune.storage", "model.name_or_path")
# A hung `dvc repro` must not hold the nightly run for ever: seconds per stage, generous on
# a CPU (tune and train of the default configuration take tens of minutes there).
DEFAULT_TIMEOUTS = {"tune": 6 * 3600, "train": 6 * 3600}
DEFAULT_TIMEOUT = 3600  # any other stage
# The flow-run page (the failure notification links it): Prefect UI's route.
FLOW_RUN_PAGE = "{ui}/runs/flow-run/{id}"


class RunRefused(ValueError):
    """A flow run asked for what its deployment does not allow."""


class DeploymentSettings(BaseModel):
    """One deployment's fixed settings.

    Attributes:
        project: the project directory its runs use (default: the checkout of the flow file,
            i.e. a work-pool worker's clone).
        allow: params keys (``prepare.seed``) or patterns (``train.*``) a run's ``overrides``
            and ``task`` may set; ``preset`` allows the ``preset`` parameter. Patterns never
            cover :data:`SENSITIVE` keys. ``None`` (direct calls only): anything.
        timeouts: seconds per stage name (``experiment`` for an ad-hoc run), over
            :data:`DEFAULT_TIMEOUTS` and :data:`DEFAULT_TIMEOUT`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    project: str | None = None
    allow: tuple[str, ...] | None = ()
    timeouts: dict[str, float] = Field(default_factory=dict)

    def timeout(self, stage: str) -> float:
        """The timeout of ``stage`` in seconds."""
        return self.timeouts.get(stage, DEFAULT_TIMEOUTS.get(stage, DEFAULT_TIMEOUT))

    def check_run(self, overrides: dict[str, Any], preset: str | None, who: str) -> None:
        """Refuse a run that overrides a key, or names a preset, not allowed here.

        Raises:
            RunRefused: naming the refused keys, the allowed ones and how to allow more.
        """
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
        """Whether a run may override params key ``key``."""
        if self.allow is None or key in self.allow:
            return True
        if any(fnmatch.fnmatchcase(key, pattern) for pattern in SENSITIVE):
            return False
        return any(fnmatch.fnmatchcase(key, pattern) for pattern in self.allow)


def settings_env(table: dict[str, DeploymentSettings]) -> dict[str, str]:
    """The environment variable that hands ``table`` (deployment name -> settings) to the
    flow-run processes."""
    return {SETTINGS_ENV: json.dumps({k: v.model_dump(mode="json") for k, v in table.items()})}


def current(deployment: str | None) -> tuple[DeploymentSettings, str]:
    """The settings of the running deployment (``None``: a direct call) and how to name it
    in messages."""
    table = json.loads(os.environ.get(SETTINGS_ENV) or "{}")
    if deployment is None:
        entry = table.get(DIRECT, {"allow": None})
        return DeploymentSettings.model_validate(entry), "this call"
    entry = table.get(deployment, {})
    return DeploymentSettings.model_validate(entry), f"deployment {deployment!r}"


def project_of(settings: DeploymentSettings, default: Path) -> Path:
    """The project directory the settings fix (``default``: the flow file's checkout)."""
    return Path(settings.project).resolve() if settings.project else default
