"""Behavioural checks of the trained model, run by the evaluate stage (after CheckList).

Cases are data, in ``behaviour_cases/<task>.yaml``: ``mft`` (obvious inputs get the expected
label or entities), ``inv`` (filling a template's ``{placeholder}`` keeps the prediction),
``dir`` (sentiment: a negation moves the positive probability the stated way). Results go
to ``reports/behaviour.json`` (a DVC metrics file), ``eval_report.md`` and MLflow.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml

from tasks.core.config import BehaviourParams
from tasks.core.data.labels import entity_type, words_from_subtokens
from tasks.core.errors import StageError
from tasks.core.io import write_atomic, write_json
from tasks.core.modeling.precision import choose_precision
from tasks.core.pretrained.model import load_model

CASES_DIR = Path(__file__).parent / "behaviour_cases"
REPORT_FILE = "behaviour.json"
MAX_FAILURES = 10  # failed cases listed per check in behaviour.json
BATCH = 32
PLACEHOLDER = re.compile(r"\{(\w+)\}")


def cases_file(task: str) -> Path:
    """The shipped cases of ``task``."""
    return CASES_DIR / f"{task}.yaml"


def load_cases(path: Path, task: str) -> dict[str, dict[str, Any]]:
    """The checks of a cases file; StageError naming file, check, case and field when the
    file is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"{path}: behaviour cases file not found")
    try:
        checks = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise StageError(f"{path}: not valid YAML: {exc}") from None
    allowed = {"mft", "inv", "dir"} if task == "text_classification" else {"mft", "inv"}
    unknown = sorted(set(checks) - allowed)
    if not isinstance(checks, dict) or unknown:
        raise StageError(f"{path}: checks must be among {sorted(allowed)}, got {unknown}")
    for name, check in checks.items():
        cases = check.get("cases") if isinstance(check, dict) else None
        if not isinstance(cases, list) or not cases:
            raise StageError(f"{path}: {name}: needs a non-empty 'cases' list")
        for number, case in enumerate(cases, 1):
            _check_case(path, task, name, number, case, check.get("fills") or {})
    return checks


def _check_case(path: Path, task: str, name: str, number: int, case: Any, fills: dict) -> None:
    where = f"{path}: {name} case {number}"
    if name == "inv":
        missing = [p for p in PLACEHOLDER.findall(str(case)) if not fills.get(p)]
        if not isinstance(case, str) or not PLACEHOLDER.search(case) or missing:
            raise StageError(
                f"{where}: {case!r} must be a template with {{placeholders}} listed in fills "
                f"(missing: {missing})"
            )
        return
    if not isinstance(case, dict) or not isinstance(case.get("text"), str):
        raise StageError(f"{where}: needs a 'text' string, got {case!r}")
    if task == "token_classification":
        entities = case.get("entities")
        if not isinstance(entities, list) or any(
            not isinstance(e, list) or len(e) != 2 or e[0] not in case["text"] for e in entities
        ):
            raise StageError(f"{where}: 'entities' must be [words, type] pairs found in the text")
    elif name == "mft" and case.get("expected") not in ("positive", "negative"):
        raise StageError(f"{where}: 'expected' must be positive or negative, got "
                         f"{case.get('expected')!r}")  # fmt: skip
    elif name == "dir" and (
        case.get("direction") not in ("up", "down") or not isinstance(case.get("changed"), str)
    ):
        raise StageError(f"{where}: needs 'changed' (a string) and 'direction' (up or down)")


def fillings(template: str, fills: dict[str, list[str]]) -> list[str]:
    """The template filled with the i-th value of each of its placeholders, for every i."""
    names = sorted(set(PLACEHOLDER.findall(template)))
    count = min(len(fills[n]) for n in names)
    return [template.format(**{n: fills[n][i] for n in names}) for i in range(count)]


def text_log_probabilities(model: Any, tokenizer: Any, texts: list[str], precision: Any) -> list:
    """Log class probabilities (numpy) of each text."""
    import torch

    model.to(precision.device)
    found = []
    with torch.inference_mode(), precision.autocast():
        for start in range(0, len(texts), BATCH):
            batch = tokenizer(
                texts[start : start + BATCH], padding=True, truncation=True, return_tensors="pt"
            ).to(precision.device)
            logits = model(**batch).logits.float()
            found += list(torch.log_softmax(logits, dim=-1).cpu().numpy())
    return found


def word_tags(model: Any, tokenizer: Any, sentences: list[list[str]], precision: Any) -> list:
    """Word-level tags of each sentence (a word takes its first sub-token's tag)."""
    import torch

    model.to(precision.device)
    id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
    found = []
    with torch.inference_mode(), precision.autocast():
        for start in range(0, len(sentences), BATCH):
            chunk = sentences[start : start + BATCH]
            encoded = tokenizer(
                chunk, is_split_into_words=True, padding=True, truncation=True,
                return_tensors="pt",
            )  # fmt: skip
            logits = model(**encoded.to(precision.device)).logits.float()
            best = logits.argmax(dim=-1).cpu().tolist()
            for row, words in enumerate(chunk):
                ids = [-1 if w is None else w for w in encoded.word_ids(row)]
                tags = [id2label[k] for k in best[row]]
                found.append(words_from_subtokens(ids, tags, [0.0] * len(tags), len(words))[0])
    return found


def entities(words: list[str], tags: list[str]) -> set[tuple[str, str]]:
    """(words, type) of every entity in IOB2 ``tags`` (seqeval's chunking)."""
    from seqeval.metrics.sequence_labeling import get_entities

    return {(" ".join(words[s : e + 1]), kind) for kind, s, e in get_entities(list(tags))}


def _result(description: str, outcomes: list[tuple[bool, dict]], **extra: Any) -> dict:
    passed = sum(ok for ok, _ in outcomes)
    return {
        "description": description,
        "count": len(outcomes),
        "passed": passed,
        "pass_rate": round(passed / len(outcomes), 6) if outcomes else None,
        **extra,
        "failures": [case for ok, case in outcomes if not ok][:MAX_FAILURES],
    }


def sentiment_indices(id2label: dict[int, str], mapping: dict[str, str]) -> dict[str, int] | str:
    """``{"positive": id, "negative": id}`` of the model's labels, or why there is none."""
    named = {mapping[label]: i for i, label in id2label.items() if label in mapping}
    unmapped = [label for label in id2label.values() if label not in mapping]
    if set(named) != {"positive", "negative"} or unmapped or len(id2label) != 2:
        return (
            f"the model's labels {sorted(id2label.values())} are not one positive and one "
            "negative label under evaluate.behaviour.sentiment_labels"
        )
    return named


def text_checks(model, tokenizer, checks: dict, settings: BehaviourParams, precision) -> dict:
    """Run the sentiment checks; ``{"checks": ..., "skipped": ...}``."""
    id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
    index = sentiment_indices(id2label, settings.sentiment_labels)
    if isinstance(index, str):
        return {"checks": {}, "skipped": {name: index for name in checks}}
    sentiment = {i: name for name, i in index.items()}

    def predict(texts: list[str]) -> list[tuple[str, float, float]]:
        """Label, positive probability and log-odds (never saturates, unlike a probability)."""
        found = []
        for logp in text_log_probabilities(model, tokenizer, texts, precision):
            positive, negative = float(logp[index["positive"]]), float(logp[index["negative"]])
            found.append((sentiment[int(logp.argmax())], math.exp(positive), positive - negative))
        return found

    found = {}
    if "mft" in checks:
        cases = checks["mft"]["cases"]
        outcomes = [
            (label == case["expected"], {**case, "predicted": label, "positive": round(p, 4)})
            for case, (label, p, _) in zip(cases, predict([c["text"] for c in cases]), strict=True)
        ]
        found["mft"] = _result(checks["mft"].get("description", ""), outcomes)
    if "inv" in checks:
        groups = [fillings(t, checks["inv"]["fills"]) for t in checks["inv"]["cases"]]
        predicted = iter(predict([text for group in groups for text in group]))
        outcomes = []
        for template, group in zip(checks["inv"]["cases"], groups, strict=True):
            labels = {text: next(predicted)[0] for text in group}
            outcomes.append((len(set(labels.values())) == 1, {"template": template, **labels}))
        found["inv"] = _result(checks["inv"].get("description", ""), outcomes)
    if "dir" in checks:
        cases = checks["dir"]["cases"]
        before = predict([c["text"] for c in cases])
        after = predict([c["changed"] for c in cases])
        outcomes, flips = [], 0
        for case, (old, p_old, o_old), (new, p_new, o_new) in zip(
            cases, before, after, strict=True
        ):
            moved = o_new < o_old if case["direction"] == "down" else o_new > o_old
            flips += old != new
            detail = {"positive_before": round(p_old, 4), "positive_after": round(p_new, 4)}
            outcomes.append((moved, {**case, **detail, "label_before": old, "label_after": new}))
        rate = round(flips / len(cases), 6)
        found["dir"] = _result(checks["dir"].get("description", ""), outcomes, flip_rate=rate)
    return {"checks": found, "skipped": {}}


def token_checks(model, tokenizer, checks: dict, settings: BehaviourParams, precision) -> dict:
    """Run the NER checks; ``{"checks": ..., "skipped": ...}``."""
    types = {entity_type(str(t)) for t in model.config.id2label.values()} - {None}
    rename = settings.entity_types

    def known(case: dict) -> bool:
        return all(rename.get(kind, kind) in types for _, kind in case["entities"])

    found, skipped = {}, {}
    if "mft" in checks:
        cases = [c for c in checks["mft"]["cases"] if known(c)]
        if len(cases) < len(checks["mft"]["cases"]):
            kinds = {k for c in checks["mft"]["cases"] for _, k in c["entities"]}
            lacking = sorted(k for k in kinds if rename.get(k, k) not in types)
            skipped["mft"] = (
                f"{len(checks['mft']['cases']) - len(cases)} case(s) skipped: the model has no "
                f"entity type for {lacking} (its types: {sorted(types)}); map them with "
                "evaluate.behaviour.entity_types"
            )
        sentences = [c["text"].split() for c in cases]
        outcomes = []
        for case, words, tags in zip(
            cases, sentences, word_tags(model, tokenizer, sentences, precision), strict=True
        ):
            expected = {(w, rename.get(k, k)) for w, k in case["entities"]}
            got = entities(words, tags)
            outcomes.append((expected <= got, {**case, "found": sorted(map(list, got))}))
        if cases:
            found["mft"] = _result(checks["mft"].get("description", ""), outcomes)
    if "inv" in checks:
        found["inv"] = _token_invariance(model, tokenizer, checks["inv"], precision)
    return {"checks": found, "skipped": skipped}


def _token_invariance(model: Any, tokenizer: Any, check: dict, precision: Any) -> dict:
    """Per template: same tags outside, and same entity types of, the filled words."""
    outcomes = []
    for template in check["cases"]:
        parts = re.split(r"(\{\w+\})", template)
        names = sorted(set(PLACEHOLDER.findall(template)))
        count = min(len(check["fills"][n]) for n in names)
        sentences, spans = [], []
        for i in range(count):
            words, filled = [], []
            for part in parts:
                match = PLACEHOLDER.fullmatch(part)
                new = (check["fills"][match.group(1)][i] if match else part).split()
                filled.append((len(words), len(words) + len(new)) if match else None)
                words += new
            sentences.append(words)
            spans.append([s for s in filled if s])
        shapes, shown = set(), {}
        for words, tags, slots in zip(
            sentences, word_tags(model, tokenizer, sentences, precision), spans, strict=True
        ):
            inside = {j for s, e in slots for j in range(s, e)}
            outside = tuple(t for j, t in enumerate(tags) if j not in inside)
            kinds = tuple(entity_type(tags[s]) or "O" for s, _ in slots)
            shapes.add((outside, kinds))
            shown[" ".join(words)] = " ".join(tags)
        outcomes.append((len(shapes) == 1, {"template": template, **shown}))
    return _result(check.get("description", ""), outcomes)


def run_checks(
    model: Any, tokenizer: Any, task: str, settings: BehaviourParams, precision: Any,
    path: Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Run the checks of ``path`` (default: ``task``'s shipped cases): ``{"cases_file",
    "checks": {name: {pass_rate, count, passed, failures}}, "skipped", "pass_rate"}``."""
    path = Path(path) if path is not None else cases_file(task)
    checks = load_cases(path, task)
    run = text_checks if task == "text_classification" else token_checks
    report = run(model, tokenizer, checks, settings, precision)
    count = sum(c["count"] for c in report["checks"].values())
    passed = sum(c["passed"] for c in report["checks"].values())
    return {
        "cases_file": path.name,
        "pass_rate": round(passed / count, 6) if count else None,
        **report,
    }


def gate(report: dict[str, Any], min_pass_rate: float | None) -> None:
    """Raise when a check passed less often than ``min_pass_rate`` (null: never)."""
    if min_pass_rate is None:
        return
    low = {
        name: check["pass_rate"]
        for name, check in report["checks"].items()
        if check["pass_rate"] is not None and check["pass_rate"] < min_pass_rate
    }
    if low:
        listed = ", ".join(f"{name} {rate:.3f}" for name, rate in low.items())
        raise StageError(
            f"behavioural checks below evaluate.behaviour.min_pass_rate ({min_pass_rate}): "
            f"{listed}; the failed cases are in {REPORT_FILE} (lower the key, or null to "
            "report only)"
        )


def check_model(params: Any, model_dir: Path, reports_dir: Path, path: Path | None = None):
    """The evaluate stage's checks: run, write ``behaviour.json`` and a section of
    ``eval_report.md``, then apply the gate. Returns the report (None when disabled)."""
    settings = params.evaluate.behaviour
    target = Path(reports_dir) / REPORT_FILE
    target.unlink(missing_ok=True)  # never a stale report from an earlier run
    if not settings.enabled:  # the file is still written: it is a DVC output of the stage
        write_json(target, {"enabled": False, "checks": {}, "skipped": {}})
        return None
    model, tokenizer = load_model(model_dir, params.task)
    precision = choose_precision(params.train.precision)
    report = run_checks(model, tokenizer, params.task, settings, precision, path)
    write_json(target, report)
    markdown = Path(reports_dir) / "eval_report.md"
    if markdown.exists():
        write_atomic(markdown, markdown.read_text(encoding="utf-8") + render(report))
    gate(report, settings.min_pass_rate)
    return report


def render(report: dict[str, Any]) -> str:
    """The Markdown section of eval_report.md."""
    lines = [
        "",
        f"## Behavioural checks ({report['cases_file']}; details in {REPORT_FILE})",
        "",
        "| check | pass rate | passed / count | what |",
        "|---|---|---|---|",
    ]
    for name, check in report["checks"].items():
        lines.append(
            f"| {name} | {check['pass_rate']:.3f} | {check['passed']} / {check['count']} | "
            f"{check['description']} |"
        )
    lines += [f"| {name} | skipped | | {reason} |" for name, reason in report["skipped"].items()]
    return "\n".join(lines) + "\n"


def summary(report: dict[str, Any]) -> str:
    """One line for the log: each check's pass rate, and what was skipped."""
    ran = [f"{n} {c['passed']}/{c['count']}" for n, c in report["checks"].items()]
    return ", ".join(ran + [f"{n} skipped ({r})" for n, r in report["skipped"].items()])


def metrics_for_mlflow(report: dict[str, Any]) -> dict[str, float]:
    """``behaviour/<check>/pass_rate`` (and ``flip_rate``) of every check that ran."""
    found = {}
    for name, check in report["checks"].items():
        for key in ("pass_rate", "flip_rate"):
            if check.get(key) is not None:
                found[f"behaviour/{name}/{key}"] = float(check[key])
    return found
