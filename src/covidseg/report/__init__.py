"""Figures (and later reports) drawn from run folders."""
