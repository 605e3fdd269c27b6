"""What a finished search leaves: ``best_params.json`` (train's input), ``tune_trials.csv``,
``tune_report.md``, the plots, the summary on the stage's MLflow run."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tasks.core.config import Params
from tasks.core.io import write_atomic, write_csv, write_figure, write_json
from tasks.core.tuned import BEST_PARAMS_FILE
from tasks.tuning.data import TuningData
from tasks.tuning.space import DEFAULTS_ROLE, defaults_values, is_defaults
from tasks.tuning.storage import describe_storage
from tasks.tuning.study import DIRECTION, SURPLUS, TIMEOUT, count_states

BEST_PARAMS = BEST_PARAMS_FILE
TRIALS_CSV = "tune_trials.csv"
REPORT_MD = "tune_report.md"
PLOTS = {
    "history": "tune_history.png",
    "importance": "tune_importance.png",
    "intermediate": "tune_intermediate.png",
}
# best_params.json (train's input): identical runs, identical file (no paths, counts, dates).
BEST_PARAMS_KEYS = (
    "status", "source", "reason", "study_name", "fingerprint", "metric", "direction",
    "baseline", "defaults_trial", "defaults_value", "best_trial", "best_value", "params",
    "decided_on", "defaults_full_value", "finalists",
)  # fmt: skip


def summarize(
    params: Params, data: TuningData, name: str, spec: str, trials: list[FrozenTrial]
) -> dict[str, Any]:
    """``best_params.json``'s content (``BEST_PARAMS_KEYS``), then facts for the reports."""
    epochs = sum(t.user_attrs.get("epochs_run", 0.0) for t in trials)
    return {
        "status": "tuned",
        **choose(trials, data.baseline, defaults_values(params), data.metric),
        "study_name": name,
        "fingerprint": data.fingerprint,
        "metric": data.metric,
        "direction": DIRECTION,
        "decided_on": "train share",
        "defaults_full_value": None,
        "finalists": [],
        "storage": describe_storage(spec),
        "trials": count_states(trials),
        "trial_epochs": round(epochs, 3),
        "examples_trained": round(epochs * len(data.train)),
        "train_examples": len(data.train),
        "train_fraction": params.tune.train_fraction,
    }


def choose(
    trials: list[FrozenTrial], baseline: float, defaults: dict[str, Any], metric: str
) -> dict[str, Any]:
    """What train uses: the best searched trial above the baseline and defaults (ties: defaults)."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    own = [t for t in complete if is_defaults(t, defaults)]
    base = min(own, key=lambda t: t.number, default=None)
    searched = [t for t in complete if t.user_attrs.get("role") != DEFAULTS_ROLE]
    eligible = [t for t in searched if t.value > baseline]
    best = max(eligible, key=lambda t: (t.value, -t.number), default=None)
    chosen: dict[str, Any] = {
        "baseline": baseline,
        "defaults_trial": base.number if base else None,
        "defaults_value": base.value if base else None,
    }
    floor = f"the trivial baseline {baseline:.4f} ({metric} of a constant prediction)"
    if best is not None and (base is None or best.value > base.value):
        against = (
            f"the defaults (trial {base.number}, {base.value:.4f})"
            if base
            else "the defaults (their trial did not complete)"
        )
        reason = f"trial {best.number} ({best.value:.4f}) beats {against} and {floor}"
        # Replace train.<key> for the train stage (tune.enabled); other keys: params.yaml.
        return {"source": "tuned", "reason": reason, **chosen, "best_trial": best.number,
                "best_value": best.value, "params": dict(best.params)}  # fmt: skip
    if base is not None and base.value > baseline:
        top = f"the best searched trial scored {best.value:.4f}" if best else "none beat " + floor
        reason = f"no searched trial beats the defaults (trial {base.number}, {base.value:.4f}); "
        return {"source": "defaults", "reason": reason + top, **chosen,
                "best_trial": base.number, "best_value": base.value, "params": {}}  # fmt: skip
    reason = f"no trial beats {floor}: train keeps params.yaml's values"
    return {"source": "defaults", "reason": reason, **chosen, "best_trial": None,
            "best_value": None, "params": {}}  # fmt: skip


def view_study(trials: list[FrozenTrial], name: str) -> optuna.Study:
    """An in-memory study of the finished trials (for plots)."""
    view = optuna.create_study(direction=DIRECTION, study_name=name)
    view.add_trials([t for t in trials if t.state.is_finished()])
    return view


def write_reports(
    params: Params,
    reports_dir: Path,
    summary: dict[str, Any],
    trials: list[FrozenTrial],
    view: optuna.Study | None,
) -> None:
    reports_dir.mkdir(parents=True, exist_ok=True)
    names = list(params.tune.space)
    rows = [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value if t.value is not None else "",
            **{f"params_{n}": t.params.get(n, "") for n in names},
            "duration": t.user_attrs.get("duration_s", ""),
            "epochs_run": t.user_attrs.get("epochs_run", ""),
            "retry_of": t.user_attrs.get("retry_of", ""),
            "role": t.user_attrs.get("role", "search"),
            "stopped": t.user_attrs.get("stopped", ""),
        }
        for t in trials
    ]
    fields = ["number", "state", "value", *(f"params_{n}" for n in names)]
    fields += ["duration", "epochs_run", "retry_of", "role", "stopped"]
    write_csv(reports_dir / TRIALS_CSV, rows, fields)
    notes = _write_plots(reports_dir, view, summary, names)
    _write_markdown(params, reports_dir / REPORT_MD, summary, rows, notes)
    best = {key: summary[key] for key in BEST_PARAMS_KEYS if key in summary}
    write_json(reports_dir / BEST_PARAMS, best)  # last: train's input


def _write_plots(
    reports_dir: Path, view: optuna.Study | None, summary: dict[str, Any], names: list[str]
) -> dict[str, str]:
    """The three PNGs (a note where a plot is not possible); returns the notes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    makers = {
        "history": plots.plot_optimization_history,
        "importance": functools.partial(plots.plot_param_importances, params=names),
        "intermediate": plots.plot_intermediate_values,
    }
    notes: dict[str, str] = {}
    for key, make in makers.items():
        path = reports_dir / PLOTS[key]
        figure = None
        try:
            if view is None:
                raise ValueError(summary.get("reason", "no study"))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = make(view)
            figure = axes.figure
            figure.set_size_inches(8, 5)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            notes[key] = str(exc) or type(exc).__name__
            figure, axes = plt.subplots(figsize=(8, 2))
            axes.axis("off")
            axes.text(0.5, 0.5, f"not available: {notes[key]}", ha="center", wrap=True)
        write_figure(path, figure, dpi=100, bbox_inches="tight")
        plt.close(figure)
    return notes


def _write_markdown(
    params: Params,
    path: Path,
    summary: dict[str, Any],
    rows: list[dict[str, Any]],
    notes: dict[str, str],
) -> None:
    """``tune_report.md``: the study, its outcome, the trials, other studies, the plots."""
    lines = ["# Hyperparameter search", ""]
    if summary["status"] != "tuned":
        lines += [f"Tuning is **disabled** ({summary['reason']}).", ""]
    else:
        lines += _outcome_markdown(params, summary, len(rows))
        lines += _trials_markdown(rows)
        lines += ["", *_other_studies_markdown(params.tune.study_name, summary["other_studies"])]
    lines += ["", "## Plots", ""]
    titles = {"history": "Optimization history", "importance": "Parameter importances"}
    titles["intermediate"] = "Validation metric at each evaluation"
    for key, name in PLOTS.items():
        note = f" (not available: {notes[key]})" if key in notes else ""
        lines += [f"![{titles[key]}]({name}){note}", ""]
    write_atomic(path, "\n".join(lines).rstrip() + "\n")


def _outcome_markdown(params: Params, summary: dict[str, Any], trial_count: int) -> list[str]:
    """The study, how trials are scored, the values train uses and the finalists round."""
    lines: list[str] = []
    tune = params.tune
    counts = ", ".join(f"{v} {k.lower()}" for k, v in sorted(summary["trials"].items()))
    lines += [
        f"Study `{summary['study_name']}` in `{summary['storage']}`: {trial_count} trials "
        f"({counts}), {summary['trial_epochs']} trial-epochs; pruner "
        f"`{tune.pruner.type}`, TPE seed {tune.seed}. The study holds this configuration "
        f"alone (`tune.study_name` `{tune.study_name}` + fingerprint "
        f"`{summary['fingerprint']}` of the data, model, space and fixed train values).",
        f"Each trial trains on {summary['train_examples']:,} examples (a stratified "
        f"{tune.train_fraction:.0%} of train) and is scored on the validation split "
        f"({summary['metric']}, {tune.evals_per_epoch} evaluation(s) per epoch).",
        "",
        f"The trivial baseline (constant prediction) scores {summary['baseline']:.4f}; "
        "a trial must beat it and the trial of `params.yaml`'s own values "
        f"(the defaults: trial {_fmt(summary['defaults_trial'])}, "
        f"{_fmt(summary['defaults_value'])}) to be used.",
        "",
    ]
    if summary["source"] == "tuned":
        lines += [
            f"**Tuned: trial {summary['best_trial']}, {summary['metric']} "
            f"{summary['best_value']:.4f}** ({summary['reason']}). The train stage uses "
            "these values in place of `params.yaml`'s `train` keys (other keys unchanged):",
            "",
            "| parameter | tuned | params.yaml |",
            "|---|---|---|",
        ]
    else:
        lines += [
            f"**Defaults kept** ({summary['reason']}). The train stage uses `params.yaml`'s "
            "`train` values:",
            "",
            "| parameter | params.yaml |",
            "|---|---|",
        ]
    for name, value in defaults_values(params).items():
        tuned = summary["params"].get(name)
        cells = [_fmt(tuned), _fmt(value)] if summary["source"] == "tuned" else [_fmt(value)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + _finalists_markdown(summary, tune.train_fraction)


def _trials_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """The trials table: number, state (why a trial stopped), value, parameters, time."""
    lines: list[str] = []
    names = [k for k in (rows[0] if rows else {}) if k.startswith("params_")]
    lines += ["", "## Trials", ""]
    header = ["number", "state", "value", *names, "duration", "epochs_run"]
    lines += ["| " + " | ".join(h.removeprefix("params_") for h in header) + " |"]
    lines += ["|" + "---|" * len(header)]
    for row in rows:
        cells = [_fmt(row[h]) for h in header]
        if row["stopped"] == TIMEOUT:
            cells[1] = "timed out (FAIL)"
        elif row["stopped"] == SURPLUS:
            cells[1] = "surplus, not run (FAIL)"
        if row["role"] == DEFAULTS_ROLE:
            cells[1] += " (defaults)"
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _finalists_markdown(summary: dict[str, Any], share: float) -> list[str]:
    """The finalists round's table (``tasks.tuning.finalists``), or why the share decided."""
    if not summary.get("finalists"):
        if summary["decided_on"] != "train share":
            return ["", f"Decided on the train share: {summary['decided_on']}."]
        return []
    lines = [
        "",
        "## Finalists (whole train split)",
        "",
        f"A searched trial beat the defaults on the {share:.0%} share, so the defaults and "
        f"the {len(summary['finalists'])} best searched trial(s) were trained again on the "
        f"whole train split ({summary['finalist_epochs']} epochs in all) and the choice was "
        "made there.",
        "",
        "| trial | on the share | on the whole split |",
        "|---|---|---|",
        f"| defaults (trial {_fmt(summary['defaults_trial'])}) | "
        f"{_fmt(summary['defaults_value'])} | {_fmt(summary['defaults_full_value'])} |",
    ]
    for row in summary["finalists"]:
        lines.append(f"| {row['trial']} | {_fmt(row['share_value'])} | {_fmt(row['full_value'])} |")
    return lines


def _other_studies_markdown(prefix: str, studies: list[dict[str, Any]]) -> list[str]:
    lines = ["## Other studies", ""]
    if not studies:
        return [*lines, f"None: no other study named `{prefix}-*` in this storage."]
    lines += [
        f"Studies of other configurations named `{prefix}-*` in the same storage, kept and "
        "not used by this search (their trials do not reach its sampler or pruner); most "
        "recent first:",
        "",
        "| study | trials | best value | best trial | started |",
        "|---|---|---|---|---|",
    ]
    for study in studies:
        started = study["started"]
        when = f"{started:%Y-%m-%d %H:%M}" if started is not None else ""
        cells = [f"`{study['study_name']}`", study["trials"], study["best_value"]]
        lines.append("| " + " | ".join(map(_fmt, [*cells, study["best_trial"], when])) + " |")
    return lines


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def log_stage(summary: dict[str, Any], reports_dir: Path, wall_time: float) -> None:
    """The summary, best values and reports on the stage's MLflow run (the active run)."""
    import mlflow

    metrics = {f"trials_{k.lower()}": float(v) for k, v in summary["trials"].items()}
    metrics |= {"trial_epochs": summary["trial_epochs"], "baseline": summary["baseline"]}
    metrics["examples_trained"] = float(summary["examples_trained"])
    for key in ("best_value", "defaults_value", "defaults_full_value", "finalist_epochs"):
        if summary.get(key) is not None:
            metrics[key] = summary[key]
    metrics["wall_time_s"] = wall_time
    mlflow.log_metrics(metrics)
    mlflow.log_params({f"best.{k}": str(v) for k, v in summary["params"].items()})
    mlflow.set_tags(
        {
            "tune.study": summary["study_name"],
            "tune.best_trial": str(summary["best_trial"]),
            "tune.source": summary["source"],
            "tune.decided_on": summary["decided_on"],
            "tune.metric": summary["metric"],
        }
    )
    for name in (BEST_PARAMS, TRIALS_CSV, REPORT_MD, *PLOTS.values()):
        mlflow.log_artifact(str(reports_dir / name), artifact_path="tune")
