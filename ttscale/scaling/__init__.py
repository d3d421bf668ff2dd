"""Scaling analysis in pure numpy, on stored samples and scores: no model runs."""
