"""Evaluation: inference, the test scores and their reports, and the behavioural checks."""
