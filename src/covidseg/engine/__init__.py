"""Training and evaluation: plain functions, with ``fit`` owning the order of things."""
