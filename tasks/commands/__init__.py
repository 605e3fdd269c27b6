"""The ``finetune`` command beyond the stages: run, predict, serve, servers, UIs, presets,
params documentation."""
