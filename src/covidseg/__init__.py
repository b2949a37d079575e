"""covidseg: COVID-19 infection segmentation on chest X-rays (COVID-QU-Ex)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "build_config", "create_model", "evaluate_run", "fit", "load_model", "Predictor"]


def load_model(model: str | None = None, **kwargs):
    """Open a model for prediction: the built-in one by default, else a built-in model's name, a
    run folder or a bundle. ``covidseg.load_model().predict("xray.png")`` (a path or an 8-bit
    gray array) gives the masks at the X-ray's size, the infected share, severity and COVID-19 call.
    Keyword arguments go to :meth:`covidseg.inference.predictor.Predictor.load`."""
    from covidseg.inference.predictor import Predictor

    return Predictor.load(model, **kwargs)


def __getattr__(name: str):
    # Lazy re-exports keep `import covidseg` (and so `covidseg --help`) free of torch imports.
    if name == "build_config":
        from covidseg.config import build_config

        return build_config
    if name == "create_model":
        from covidseg.models import create_model

        return create_model
    if name == "fit":
        from covidseg.engine.fit import fit

        return fit
    if name == "evaluate_run":
        from covidseg.evaluation import evaluate_run

        return evaluate_run
    if name == "Predictor":
        from covidseg.inference.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'covidseg' has no attribute {name!r}")
