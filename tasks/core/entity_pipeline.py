"""The MLflow pyfunc model the register stage logs for token classification:
``EntityPipeline`` serves the fine-tuned token classifier and returns each entity with its
type, score and character span (``word`` is always the user's own ``text[start:end]``).

The model is logged from this file's code (MLflow's models-from-code; it ends with
``set_model``), so it imports nothing of this project and loads in any environment with the
model's requirements. ``predict`` and ``serve`` never run the copy a version carries: they
run this module on verified weights (tasks/core/registration/verified.py). Older versions
are pickled by reference to ``tasks.core.entity_pipeline`` or ``tasks.register``: keep both names.

Token classification at any length (evaluate uses it too): overlapping windows, each word
taking the window where its first sub-token lies farthest from an edge. Hand-written: the
transformers pipeline's ``stride`` refuses ``aggregation_strategy="none"``.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class EntityPipeline(PythonModel):
    """Named entities with type, score and character span from the ``model`` artifact.

    Word-level, as ``train`` labels and ``evaluate`` scores: a word takes its first sub-token's
    tag; adjacent words of one type form an entity (``B-`` starts a new one). ``word`` is the
    user's own ``text[start:end]``, never decoded sub-tokens.
    """

    # MLflow's opt-out of type-hint validation (else every import prints a warning)
    _skip_type_hint_validation = True

    def load_context(self, context):
        import transformers

        self.pipeline = transformers.pipeline(
            "token-classification", model=context.artifacts["model"], device="cpu"
        )

    # No type hints here: MLflow would read them as an input schema.
    def predict(self, context, model_input, params=None):
        texts = model_input.iloc[:, 0] if hasattr(model_input, "iloc") else model_input
        return self.entities(self.pipeline, [str(t) for t in texts])

    @staticmethod
    def entities(pipeline: Any, texts: list[str]) -> list[list[dict[str, Any]]]:
        """One list per text of ``{entity, score, word, start, end}``, at any length.

        Not the pipeline's aggregation: ``simple`` can split a word into two entities,
        ``first`` misreads decomposed accents, and ``stride`` refuses ``none``.
        """
        return EntityPipeline.entities_of(pipeline.model, pipeline.tokenizer, texts)

    @staticmethod
    def entities_of(model: Any, tokenizer: Any, texts: list[str]) -> list[list[dict[str, Any]]]:
        """:meth:`entities` of a token classifier and its fast tokenizer."""
        cap = getattr(model.config, "max_position_embeddings", 512)
        length = min(tokenizer.model_max_length, cap, 512)
        return [EntityPipeline._text_entities(model, tokenizer, t, length) for t in texts]

    @staticmethod
    def _text_entities(model: Any, tokenizer: Any, text: str, length: int) -> list[dict]:
        """The entities of one text, from windows of ``length`` sub-tokens."""
        encoding = encode_windows(tokenizer, text, length, return_offsets_mapping=True)
        probabilities = window_probabilities(model, encoding)
        chosen = best_word_positions(encoding, subtoken_counts(tokenizer, text))
        tokens = []  # one record per word, as spans() reads sub-tokens
        for word in sorted(chosen):
            window, position = chosen[word]
            ids, offsets = encoding.word_ids(window), encoding["offset_mapping"][window]
            last = max(p for p, w in enumerate(ids) if w == word)
            scores = probabilities[window, position]
            tokens.append(
                {
                    "index": len(tokens),
                    "entity": model.config.id2label[int(scores.argmax())],
                    "score": float(scores.max()),
                    "start": int(offsets[position][0]),
                    "end": int(offsets[last][1]),
                }
            )
        return EntityPipeline.spans(text, tokens, sorted(chosen))

    @staticmethod
    def spans(
        text: str, tokens: list[dict[str, Any]], word_ids: list[int | None]
    ) -> list[dict[str, Any]]:
        """Entities of ``text`` from per-sub-token ``{entity, score, index, start, end}`` and
        their ``word_ids()``; a score is the mean over the entity's words."""
        import unicodedata

        words: dict[int, dict[str, Any]] = {}
        for token in tokens:
            word = word_ids[int(token["index"])]
            if word is None:
                continue
            if word not in words:  # its first sub-token: the word's tag and score
                words[word] = {"tag": token["entity"], "score": float(token["score"])}
                words[word]["start"] = int(token["start"])
            words[word]["end"] = int(token["end"])  # its last sub-token so far
        found: list[dict[str, Any]] = []
        scores: list[float] = []
        last = None  # (word, type) of the previous word when it is in an entity
        for word in sorted(words):
            tag, end = words[word]["tag"], words[word]["end"]
            # The offsets leave out a combining mark that ends a word ("Jose" + U+0301).
            while end < len(text) and unicodedata.combining(text[end]):
                end += 1
            if tag == "O":
                last = None
                continue
            kind = tag[2:] if tag.startswith(("B-", "I-")) else tag
            if tag.startswith("B-") or last != (word - 1, kind):
                found.append({"entity": kind, "start": words[word]["start"]})
                scores = []
            scores.append(words[word]["score"])
            found[-1].update(score=round(sum(scores) / len(scores), 4), end=end)
            last = (word, kind)
        return [
            {
                "entity": e["entity"],
                "score": e["score"],
                "word": text[e["start"] : e["end"]],
                "start": e["start"],
                "end": e["end"],
            }
            for e in found
        ]


def encode_windows(tokenizer: Any, inputs: Any, max_length: int, **kwargs: Any) -> Any:
    """``inputs`` (one text, or one list of words with ``is_split_into_words=True``) as
    windows of at most ``max_length`` sub-tokens overlapping by half a window, padded into
    one batch of tensors."""
    stride = max(max_length // 2 - 2, 0)  # special tokens are outside the overlap
    return tokenizer(
        inputs,
        truncation=True,
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        padding=True,
        return_tensors="pt",
        **kwargs,
    )


def window_probabilities(model: Any, encoding: Any) -> np.ndarray:
    """Class probabilities per window and sub-token: (windows, positions, classes)."""
    import torch

    names = ("input_ids", "attention_mask", "token_type_ids")
    device = next(model.parameters()).device
    batch = {k: encoding[k].to(device) for k in names if k in encoding}
    with torch.inference_mode():
        logits = model(**batch).logits.float()
    return torch.softmax(logits, dim=-1).cpu().numpy()


def best_word_positions(encoding: Any, subtokens: dict[int, int]) -> dict[int, tuple[int, int]]:
    """For every word, the (window, position) of its first sub-token farthest from its
    window's edges; ``subtokens`` (whole-encoding counts) tells a window that cut a word."""
    chosen: dict[int, tuple[int, int, int]] = {}
    for window in range(len(encoding["input_ids"])):
        word_ids = encoding.word_ids(window)
        inside = [p for p, w in enumerate(word_ids) if w is not None]
        if not inside:
            continue
        first, last = inside[0], inside[-1]
        cut = (
            word_ids[first]
            if word_ids.count(word_ids[first]) < subtokens[word_ids[first]]
            else None
        )
        for position in inside:
            word = word_ids[position]
            if word_ids[position - 1] == word or (position == first and word == cut):
                continue  # not its first sub-token, or its start lies in the window before
            margin = min(position - first, last - position)
            if word not in chosen or margin > chosen[word][2]:
                chosen[word] = (window, position, margin)
    return {word: (window, position) for word, (window, position, _) in chosen.items()}


def subtoken_counts(tokenizer: Any, inputs: Any, **kwargs: Any) -> dict[int, int]:
    """Sub-tokens per word of ``inputs`` encoded whole (no truncation)."""
    counts: dict[int, int] = {}
    for word in tokenizer(inputs, truncation=False, **kwargs).word_ids():
        if word is not None:
            counts[word] = counts.get(word, 0) + 1
    return counts


def windowed_words(
    model: Any, tokenizer: Any, words: list[str], max_length: int, id2label: dict[int, str]
) -> tuple[list[str], list[float | None]]:
    """Tag and confidence of every word of one sentence (a list of words), however long:
    ``O`` and None only for a word with no sub-token at all."""
    encoding = encode_windows(tokenizer, words, max_length, is_split_into_words=True)
    probabilities = window_probabilities(model, encoding)
    counts = subtoken_counts(tokenizer, words, is_split_into_words=True)
    tags: list[str] = ["O"] * len(words)
    confidence: list[float | None] = [None] * len(words)
    for word, (window, position) in best_word_positions(encoding, counts).items():
        scores = probabilities[window, position]
        tags[word] = id2label[int(scores.argmax())]
        confidence[word] = float(scores.max())
    return tags, confidence


mlflow.models.set_model(EntityPipeline())
