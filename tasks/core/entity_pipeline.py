"""The MLflow pyfunc model the register stage logs for token classification:
``EntityPipeline`` serves the fine-tuned token classifier and returns each entity with its
type, score and character span (``word`` is always the user's own ``text[start:end]``).
A logged model is pickled (cloudpickle) by reference to this class: loading it imports
this module. Versions logged before the class moved here name ``tasks.register``, which
therefore keeps the name bound.
"""

from __future__ import annotations

from typing import Any

from mlflow.pyfunc import PythonModel

from tasks.core.windows import (
    best_word_positions,
    encode_windows,
    subtoken_counts,
    window_probabilities,
)


class EntityPipeline(PythonModel):
    """Named entities with type, score and character span, from the fine-tuned token
    classifier saved by ``train`` (the ``model`` artifact).

    Word-level, as ``train`` labels and ``evaluate`` scores: a word (the fast tokenizer's
    ``word_ids()``) takes the tag of its first sub-token, and adjacent words of one type form
    an entity (``B-`` starts a new one). ``word`` is ``text[start:end]``: the user's own text,
    with its case, accents and spacing, never the decoded (lowercased) sub-tokens.
    """

    # MLflow's own opt-out of type-hint validation: without it, defining this class (every
    # import of this module, `tasks.register --help` too) prints a coloured "Add type hints"
    # warning.
    _skip_type_hint_validation = True

    def load_context(self, context):
        import transformers

        # Sub-token predictions: entities() groups them into words (see there).
        self.pipeline = transformers.pipeline(
            "token-classification", model=context.artifacts["model"], device="cpu"
        )

    # No type hints here: MLflow would read them as an input schema.
    def predict(self, context, model_input, params=None):
        texts = model_input.iloc[:, 0] if hasattr(model_input, "iloc") else model_input
        return self.entities(self.pipeline, [str(t) for t in texts])

    @staticmethod
    def entities(pipeline: Any, texts: list[str]) -> list[list[dict[str, Any]]]:
        """One list per text of ``{entity, score, word, start, end}``, every word predicted at
        any length: a text longer than the model's window is encoded in overlapping windows
        (:mod:`tasks.core.windows`).

        The pipeline's own aggregation is not used: ``simple`` groups sub-tokens by their
        tags (untrained on all but a word's first sub-token, so one word can come out as two
        entities or half of one), ``first`` guesses word boundaries from token lengths
        (wrong for decomposed accents), and its ``stride`` refuses the ``none`` aggregation.
        Each word takes its first sub-token's prediction (``word_ids()``), as evaluate scores.
        """
        model, tokenizer = pipeline.model, pipeline.tokenizer
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
        """Entities of ``text`` from per-sub-token predictions (the ``none`` aggregation's
        ``{entity, score, index, start, end}``, ``O`` included) and the ``word_ids()`` of
        that encoding (``None`` on special tokens). Scores are the mean over the entity's
        words of their first sub-token's probability."""
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
