"""Token classification at any length: overlapping windows give every word a prediction from
its own first sub-token, taken where it lies farthest from a window's edge."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer, BertForTokenClassification

from tasks.core.data.labels import words_from_subtokens
from tasks.core.entity_pipeline import (
    best_word_positions,
    encode_windows,
    subtoken_counts,
    window_probabilities,
    windowed_words,
)

# Words of several sub-tokens (the tiny vocabulary spells unknown words letter by letter), so
# windows start inside words.
WORDS = ["paris", "zzyzx", "the", "movie", "qwerty", "alice", "smith", "rome", "xylophone"]


def tiny_tagger(model_dir):
    torch.manual_seed(0)
    id2label = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC"}
    model = BertForTokenClassification.from_pretrained(
        model_dir, num_labels=4, id2label=id2label, label2id={v: k for k, v in id2label.items()}
    ).eval()
    return model, AutoTokenizer.from_pretrained(model_dir), id2label


def test_every_word_of_a_long_sentence_is_taken_from_its_own_first_subtoken(tiny_model_dir):
    _, tokenizer, _ = tiny_tagger(tiny_model_dir)
    words = (WORDS * 12)[:100]
    whole = tokenizer(words, is_split_into_words=True)
    first_ids = {}
    for position, word in enumerate(whole.word_ids()):
        if word is not None and word not in first_ids:
            first_ids[word] = whole["input_ids"][position]
    encoding = encode_windows(tokenizer, words, 24, is_split_into_words=True)
    assert len(encoding["input_ids"]) > 5  # many windows of 24
    chosen = best_word_positions(
        encoding, subtoken_counts(tokenizer, words, is_split_into_words=True)
    )
    assert set(chosen) == set(range(len(words)))
    for word, (window, position) in chosen.items():
        ids = encoding.word_ids(window)
        assert ids[position] == word and ids[position - 1] != word
        assert int(encoding["input_ids"][window][position]) == first_ids[word]


def test_a_sentence_that_fits_gets_the_same_tags_as_one_encoding(tiny_model_dir):
    model, tokenizer, id2label = tiny_tagger(tiny_model_dir)
    words = WORDS[:6]
    encoding = tokenizer(words, is_split_into_words=True, return_tensors="pt")
    probabilities = torch.softmax(model(**encoding).logits, dim=-1)[0].detach().numpy()
    tags = [id2label[int(k)] for k in probabilities.argmax(axis=-1)]
    ids = [-1 if w is None else w for w in encoding.word_ids()]
    expected, _ = words_from_subtokens(ids, tags, probabilities.max(axis=-1).tolist(), len(words))
    got, confidence = windowed_words(model, tokenizer, words, 64, id2label)
    assert got == expected and None not in confidence
    windows = encode_windows(tokenizer, words, 64, is_split_into_words=True)
    assert window_probabilities(model, windows).shape[0] == 1
