"""Row digests: compare, deduplicate and look up texts without holding them twice.

Hand-written: keying rows by their texts in pandas held every text again as a Python object
(bench/memory.py); a digest takes 16 bytes a row.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# Rows hashed at a time: pandas hashes strings as Python objects, made for the chunk only.
CHUNK_ROWS = 10_000
KEYS = ("finetune-flow-01", "finetune-flow-02")  # two SipHash-2-4 keys: 128 bits


def row_keys(values: pd.Series | pd.DataFrame) -> np.ndarray:
    """A 128-bit digest of each row's value(s) as 16-byte numpy voids for ``np.unique`` and
    ``np.isin`` (collision odds about n^2 / 2^129). A null has a digest too."""
    digests = np.empty((len(values), 2), dtype=np.uint64)
    for start in range(0, len(values), CHUNK_ROWS):
        chunk = values.iloc[start : start + CHUNK_ROWS]
        for column, key in enumerate(KEYS):
            hashed = pd.util.hash_pandas_object(chunk, index=False, hash_key=key)
            digests[start : start + len(chunk), column] = hashed.to_numpy()
    return digests.view(np.dtype((np.void, 16))).ravel()


def first_rows(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row, the position of the first row with its key; and the distinct keys'
    numbers (0..n-1, in digest order) for each row."""
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return first[inverse], inverse
