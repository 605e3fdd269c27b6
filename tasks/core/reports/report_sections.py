"""The sections of the run report (``reports/report.html``), built from the files the stages
wrote (a missing file becomes a note); nothing is re-scored or re-trained.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from tasks.core import tracking
from tasks.core.reports.html_blocks import esc, figure_png, fmt, image, note, section, table

def read_json(path: Path) -> Any:
    """The JSON content of ``path``, None when the file is missing."""
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def read_csv(path: Path) -> list[dict[str, str]] | None:
    if not path.exists():
        return None
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def read_jsonl(path: Path) -> list[dict[str, Any]] | None:
    if not path.exists():
        return None
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def as_number(text: str) -> int | float | str:
    """A CSV cell as a number where it is one."""
    for kind in (int, float):
        try:
            return kind(text)
        except (TypeError, ValueError):
            continue
    return text


def data_section(reports: Path, prepared: Path) -> str:
    summary = read_json(prepared / "summary.json")
    parts = []
    if summary is None:
        parts.append(note("No data summary (data/prepared/summary.json missing)."))
    else:
        unit = summary.get("length_unit", "length")
        rows = [
            [
                split,
                info["examples"],
                ", ".join(f"{k}: {v}" for k, v in info["labels"].items()),
                info["length"]["p50"],
                info["length"]["p90"],
            ]
            for split, info in summary["splits"].items()
        ]
        parts.append(
            f"<p>Source <code>{esc(summary['source'])}</code>, task "
            f"<code>{esc(summary['task'])}</code>, split seed {esc(summary['seed'])}, "
            f"{esc(summary['total_examples'])} examples.</p>"
        )
        parts.append(table(["split", "examples", "labels", f"p50 {unit}", f"p90 {unit}"], rows))
    parts.append(validation_part(read_json(reports / "validation.json")))
    return section("data", "Data and validation", "".join(parts))


def validation_part(report: dict[str, Any] | None) -> str:
    if report is None:
        return note("No validation report (reports/validation.json missing).")
    verdict = (
        '<span class="ok">passed</span>'
        if report["success"]
        else f'<span class="fail">FAILED ({esc(report["failed"])} failed)</span>'
    )
    text = f"<p>Data validation {verdict}: {esc(report['evaluated'])} expectations.</p>"
    failed = [e for e in report["expectations"] if not e["success"]]
    if failed:
        rows = [
            [e["split"], e["check"], e.get("column") or "", e["observed"], e["threshold"]]
            for e in failed
        ]
        text += table(["split", "check", "column", "observed", "expected"], rows)
    return text


def tuning_section(reports: Path) -> str:
    best = read_json(reports / "best_params.json")
    trials = read_csv(reports / "tune_trials.csv")
    if best is None or trials is None:
        return section("tuning", "Tuning", note("No tuning outputs (the tune stage did not run)."))
    source, reason = esc(best.get("source", "")), esc(best.get("reason", ""))
    parts = [
        f"<p>Status <code>{esc(best['status'])}</code>; train uses <b>{source}</b> values: "
        f"{reason}</p>"
    ]
    if best.get("params"):
        parts.append(
            table(["parameter", "tuned value"], [[k, v] for k, v in best["params"].items()])
        )
    states = Counter(t["state"] for t in trials)
    parts.append(
        "<p>Trials: "
        + ", ".join(f"{esc(s.lower())} {n}" for s, n in sorted(states.items()))
        + f" (pruned: {states.get('PRUNED', 0)}).</p>"
    )
    if trials:
        headers = [h for h in trials[0] if h not in ("retry_of", "stopped")]
        rows = [[as_number(t[h]) if h != "state" else t[h] for h in headers] for t in trials]
        parts.append(table([h.removeprefix("params_") for h in headers], rows))
    parts.append("<h3>Parameter importance</h3>" + importance_part(trials, best))
    for name, title in (
        ("tune_history.png", "Optimization history"),
        ("tune_intermediate.png", "Validation metric at each evaluation"),
    ):
        parts.append(f"<h3>{esc(title)}</h3>" + image(reports / name, title))
    return section("tuning", "Tuning", "".join(parts))


def importance_part(trials: list[dict[str, str]], best: dict[str, Any]) -> str:
    """fANOVA importances over the complete trials, from a study rebuilt in memory from
    tune_trials.csv (tune's declared output; the stored study may be elsewhere)."""
    import optuna

    names = [
        h.removeprefix("params_") for h in (trials[0] if trials else {}) if h.startswith("params_")
    ]
    usable = [
        t for t in trials
        if t["state"] == "COMPLETE" and t["value"] and all(t[f"params_{n}"] for n in names)
    ]  # fmt: skip
    if not names or len(usable) < 2:
        return note(f"Not available: {len(usable)} complete trial(s) sampled every dimension "
                    "(at least 2 are needed).")  # fmt: skip
    distributions = {n: _distribution([t[f"params_{n}"] for t in usable]) for n in names}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=best.get("direction", "maximize"))
    for t in usable:
        values = {n: _param_value(t[f"params_{n}"], distributions[n]) for n in names}
        study.add_trial(
            optuna.trial.create_trial(
                params=values, distributions=distributions, value=float(t["value"])
            )
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "importances will be equal" on few trials
            importances = optuna.importance.get_param_importances(study, params=names)
    except (RuntimeError, ValueError) as exc:
        return note(f"Not available: {exc}")
    rows = [[name, float(value)] for name, value in importances.items()]
    return f"<p>Over {len(usable)} complete trials.</p>" + table(["parameter", "importance"], rows)


def _distribution(values: list[str]) -> Any:
    import optuna

    numbers = [as_number(v) for v in values]
    if all(isinstance(v, int | float) for v in numbers):
        low, high = min(numbers), max(numbers)
        return optuna.distributions.FloatDistribution(low, high if high > low else low + 1e-12)
    return optuna.distributions.CategoricalDistribution(sorted(set(values)))


def _param_value(text: str, distribution: Any) -> Any:
    import optuna

    if isinstance(distribution, optuna.distributions.FloatDistribution):
        return float(text)
    return text


def training_section(reports: Path) -> str:
    metrics = read_json(reports / "train_metrics.json")
    if metrics is None:
        return section("training", "Training", note("No training outputs."))
    keys = ["metric", "best_validation_metric", "best_epoch", "epochs_run", "global_steps",
            "train_examples", "learning_rate", "precision", "device", "method",
            "params_source", "train_samples_per_second", "wall_time_s"]  # fmt: skip
    parts = [table(["key", "value"], [[k, metrics[k]] for k in keys if k in metrics])]
    steps = read_csv(reports / "train_history.csv") or []
    epochs = read_csv(reports / "validation_history.csv") or []
    parts.append("<h3>Training curves</h3>")
    if not steps and not epochs:
        parts.append(note("No training history was logged."))
    else:
        parts.append(curves(steps, epochs))
    return section("training", "Training", "".join(parts))


def curves(steps: list[dict[str, str]], epochs: list[dict[str, str]]) -> str:
    """Training loss per logged step and each validation metric per epoch, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.5))
    logged = [s for s in steps if s.get("loss")]
    left.plot([float(s["step"]) for s in logged], [float(s["loss"]) for s in logged], marker=".")
    left.set(title="Training loss", xlabel="step")
    for key in [k for k in (epochs[0] if epochs else {}) if k not in ("epoch", "step")]:
        points = [(float(e["epoch"]), float(e[key])) for e in epochs if e.get(key)]
        if points:
            right.plot(*zip(*points, strict=True), marker="o", label=key)
    right.set(title="Validation per epoch", xlabel="epoch")
    if epochs:
        right.legend(fontsize="small")
    return figure_png(figure)


def test_section(reports: Path) -> str:
    metrics = read_json(reports / "metrics.json")
    if metrics is None:
        return section("test", "Test metrics", note("No test metrics (evaluate did not run)."))
    scalars = [[k, v] for k, v in metrics.items() if isinstance(v, int | float)]
    parts = [table(["metric", "value"], scalars)]
    speed = read_json(reports / "inference_speed.json")
    if speed:
        parts.append(
            f"<p>Inference: {fmt(speed.get('samples_per_second'))} samples/s on "
            f"{esc(speed.get('device'))} ({esc(speed.get('dtype'))}).</p>"
        )
    for key, title in (("per_class", "Per class"), ("per_type", "Per entity type")):
        if isinstance(metrics.get(key), dict):
            rows = [[name, s["precision"], s["recall"], s["f1"], s["support"]]
                    for name, s in metrics[key].items()]  # fmt: skip
            parts.append(f"<h3>{title}</h3>")
            parts.append(table(["label", "precision", "recall", "f1", "support"], rows))
    parts.append("<h3>Confusion matrix</h3>" + confusion_part(reports))
    return section("test", "Test metrics", "".join(parts))


def confusion_part(reports: Path) -> str:
    """Counts of (actual, predicted) from evaluate's confusion.csv, and its PNG."""
    pairs = read_csv(reports / "confusion.csv")
    if not pairs:
        return note("confusion.csv missing or empty.")
    counts = Counter((p["actual"], p["predicted"]) for p in pairs)
    labels = sorted({a for a, _ in counts} | {p for _, p in counts})
    rows = [[actual, *(counts.get((actual, p), 0) for p in labels)] for actual in labels]
    return table(["actual \\ predicted", *labels], rows) + image(
        reports / "confusion_matrix.png", "confusion matrix"
    )


def errors_section(reports: Path) -> str:
    errors = read_jsonl(reports / "errors.jsonl")
    if errors is None:
        return section("errors", "Worst errors", note("errors.jsonl missing."))
    if not errors:
        return section("errors", "Worst errors", note("No misclassified test example."))
    rows = []
    for error in errors:  # evaluate wrote them most confident first
        gold, predicted = error["gold"], error["predicted"]
        if "wrong_words" in error:  # token classification: the wrong words only
            gold = ", ".join(f"{w['word']}: {w['gold']}" for w in error["wrong_words"])
            predicted = ", ".join(f"{w['word']}: {w['predicted']}" for w in error["wrong_words"])
        source = f"{error.get('source_file') or ''}:{error.get('source_line') or ''}".strip(":")
        rows.append([error["text"], gold, predicted, error.get("confidence"), source])
    body = f"<p>{len(errors)} misclassified examples, most confident mistake first.</p>"
    body += table(["text", "gold", "predicted", "confidence", "source"], rows)
    return section("errors", "Worst errors", body)


def lineage_section(reports: Path, project: Path, parent_run: str | None) -> str:
    git = tracking.git_state(project)
    rows = [["git commit", git.get("git.commit", "unknown")],
            ["uncommitted changes", git.get("git.dirty", "unknown")]]  # fmt: skip
    # dvc.lock is read, not a dependency: DVC rewrites it after every stage
    rows += [
        [f"DVC hash of {path}", digest] for path, digest in tracking.dvc_hashes(project).items()
    ]
    registry = read_json(reports / "registry.json")
    if registry:
        aliases = ", ".join(f"@{a} -> v{v}" for a, v in sorted(registry["aliases"].items()))
        rows += [
            ["registered model", registry["model_name"]],
            ["version", registry["version"]],
            ["aliases", aliases or "none"],
            ["decision", f"{registry['decision']}: {registry['reason']}"],
            ["model URI", registry["model_uri"]],
            ["MLflow run of the model", registry["run_id"]],
            ["test data hash", registry["test_data_hash"]],
        ]
    else:
        rows.append(["registered model", "none (register did not run)"])
    if parent_run:
        rows.append(["MLflow pipeline run", parent_run])
    return section("lineage", "Lineage", table(["what", "value"], rows))
