"""Data: the sources a run reads, splitting and row keys, labels, document context, truncation,
encoding, batches, and the tokenized datasets the model stages read."""
