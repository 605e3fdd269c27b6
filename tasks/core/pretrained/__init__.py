"""Where an encoder comes from: a local folder, a built-in encoder, a pinned hub revision or a
registered version (``models:/``); loading and saving tokenizers and models."""
