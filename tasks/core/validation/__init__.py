"""The validate stage's parts: the prepared splits and their derived columns (``frames``),
the Great Expectations suites (``expectations``), running them (``gx``), the way out of each
failure (``remedies``) and the reports (``report``)."""
