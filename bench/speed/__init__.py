"""The throughput benchmark's parts (``bench/throughput.py`` is its command line), one job each:
``data`` (corpora, sample, tokenization), ``clock`` (timing windows, matmul peak), ``flops``
(FLOPs, rates, MFU), ``training`` and ``inference`` (the product and the baselines), ``runs``
(one dataset, the accuracy guard), ``targets`` (issue 13's targets checked)."""
