"""Evaluation harness: datasets, rendered captures, the user's reconstruction path, metrics,
reports. ``rvg-ros eval`` (see ``runner.py``) ties them together."""
