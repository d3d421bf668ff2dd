"""Figures and reports, drawn from results already on disk (no model runs)."""
