"""Reports: the HTML blocks and sections of the run report, and the train stage's report."""
