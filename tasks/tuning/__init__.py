"""The tune stage's parts (``tasks/tune.py`` reads params, calls them, writes outputs):
``space`` (values of a trial, the defaults trial), ``storage`` (Optuna's RDB storage and its
heartbeat), ``study`` (one study per configuration, sampler, pruner, the trial loop and its
surplus rule), ``data`` (what trials train and are scored on), ``objective`` (one trial) and
``results`` (the choice of values, best_params.json, the reports and MLflow)."""
