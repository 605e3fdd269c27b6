"""flows/settings.py: what a deployment lets its runs override (issue 31 item 1)."""

from __future__ import annotations

import pytest

from flows.settings import (
    DEFAULT_TIMEOUT,
    DIRECT,
    SETTINGS_ENV,
    DeploymentSettings,
    RunRefused,
    current,
    settings_env,
)


def test_patterns_never_cover_the_keys_that_name_servers_or_code():
    settings = DeploymentSettings(allow=("*", "train.*"))
    assert settings.allows("train.epochs") and settings.allows("prepare.seed")
    for key in ("tracking.uri", "tracking.experiment", "tune.storage", "model.name_or_path"):
        assert not settings.allows(key), key
    assert DeploymentSettings(allow=("tune.storage",)).allows("tune.storage")


def test_a_refusal_names_every_refused_key_and_how_to_allow_it():
    settings = DeploymentSettings(allow=("train.*",))
    with pytest.raises(RunRefused) as refused:
        settings.check_run({"task": "x", "train.epochs": 2, "tracking.uri": "u"}, "p", "here")
    message = str(refused.value)
    assert message.startswith("here does not allow preset=p, task, tracking.uri (allowed: train.*")
    assert "--allow KEY" in message and "train.epochs" not in message.split("(")[0]
    with pytest.raises(RunRefused, match=r"allowed: none"):
        DeploymentSettings().check_run({"prepare.seed": 1}, None, "d")
    DeploymentSettings(allow=("preset",)).check_run({}, "p", "d")  # allowed: no error


def test_a_deployment_without_settings_allows_nothing_and_direct_calls_anything(monkeypatch):
    monkeypatch.setenv(
        SETTINGS_ENV, settings_env({"a": DeploymentSettings(allow=("x.y",))})[SETTINGS_ENV]
    )
    assert current("a")[0].allow == ("x.y",)
    unknown, who = current("b")
    assert unknown.allow == () and unknown.project is None and who == "deployment 'b'"
    direct, who = current(None)
    assert direct.allow is None and who == "this call"
    direct.check_run({"tracking.uri": "u"}, "p", who)  # the caller's own process
    monkeypatch.setenv(SETTINGS_ENV, settings_env({DIRECT: DeploymentSettings()})[SETTINGS_ENV])
    assert current(None)[0].allow == ()


def test_timeouts_per_stage_over_the_defaults():
    settings = DeploymentSettings(timeouts={"prepare": 5})
    assert settings.timeout("prepare") == 5
    assert settings.timeout("validate") == DEFAULT_TIMEOUT
    assert settings.timeout("train") > DEFAULT_TIMEOUT
