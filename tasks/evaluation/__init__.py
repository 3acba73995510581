"""Downstream evaluation of a pretrained encoder beside its baselines (issue 10); see runner.py."""
