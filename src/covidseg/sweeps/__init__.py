"""Sweep specs shipped with covidseg (``covidseg sweep NAME``); see :mod:`covidseg.sweep`."""
