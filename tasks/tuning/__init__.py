"""The tune stage's parts; ``tasks/tune.py`` reads params, calls them, writes outputs."""
