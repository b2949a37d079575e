"""The built-in models: trained bundles shipped inside the package, usable with no training.

Each is an ordinary bundle (:mod:`covidseg.inference.bundle`, written by ``covidseg export
--precision fp16 --onnx-only``) under ``covidseg/pretrained/<name>/`` with its model card
(``MODEL_CARD.md``: data, command, seed, hashes, Val figures, speed, intended use, failure
modes). ``covidseg predict XRAY --out DIR`` uses :data:`DEFAULT` when no model is named;
``covidseg models`` lists them; ``covidseg.load_model()`` opens one in Python.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

from covidseg.errors import CovidsegError

DEFAULT = "covidseg-v3"
CARD = "MODEL_CARD.md"


def pretrained_root() -> Path:
    return Path(str(resources.files("covidseg"))) / "pretrained"


def builtin_names() -> list[str]:
    """The names of the built-in models installed with this copy of covidseg."""
    root = pretrained_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "config.json").is_file())


def builtin_path(name: str | None = None) -> Path:
    """The folder of built-in model ``name`` (default :data:`DEFAULT`)."""
    name = name or DEFAULT
    names = builtin_names()
    if name not in names:
        have = ", ".join(names) if names else "none (this copy of covidseg was installed without them)"
        raise CovidsegError(f"no built-in model {name!r}; built-in models: {have}")
    return pretrained_root() / name


def resolve_model(model: str | Path | None) -> Path:
    """What a user names as a model: nothing (the default built-in model), a built-in model's
    name, or the path of a run folder or bundle. A bundle or run folder in the working directory
    with a built-in model's name wins over it (``./covidseg-v3`` or a ``Path`` always names the
    folder); any other same-named folder does not."""
    if model is None:
        return builtin_path()
    path = Path(model)
    if isinstance(model, str) and model in builtin_names() and not holds_a_model(path):
        return builtin_path(str(model))  # a same-named folder of other things (predict's --out) does not hide it
    if path.exists():
        return path
    raise CovidsegError(
        f"{model} is neither a run folder, a bundle nor a built-in model ({', '.join(builtin_names()) or 'none'})"
    )


def is_run_folder(path: str | Path) -> bool:
    """Whether ``path`` looks like a run folder of ``covidseg train`` (its config or checkpoints;
    opening it checks the rest)."""
    return (Path(path) / "config.yaml").is_file() or (Path(path) / "checkpoints").is_dir()


def holds_a_model(path: str | Path) -> bool:
    """Whether ``path`` looks like a model: a bundle or a run folder."""
    from covidseg.inference.bundle import is_bundle  # PyTorch and onnxruntime: only when asked

    return is_bundle(path) or is_run_folder(path)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def describe(name: str | None = None) -> dict[str, Any]:
    """A built-in model's name, files (bytes, SHA-256), outputs, input size, Val figures and card."""
    return describe_bundle(builtin_path(name))


def describe_bundle(d: Path) -> dict[str, Any]:
    """The same for any bundle folder."""
    cfg = json.loads((d / "config.json").read_text())
    meta = json.loads((d / "metadata.json").read_text()) if (d / "metadata.json").is_file() else {}
    files = {f.name: {"bytes": f.stat().st_size, "sha256": sha256(f)} for f in sorted(d.iterdir()) if f.is_file()}
    card = (d / CARD).read_text() if (d / CARD).is_file() else ""
    title = next((line.lstrip("# ").strip() for line in card.splitlines() if line.startswith("# ")), d.name)
    title = title.removeprefix(f"{d.name}: ")
    return {
        "name": d.name,
        "builtin": d.parent == pretrained_root(),
        "default": d.parent == pretrained_root() and d.name == DEFAULT,
        "title": title,
        "path": str(d),
        "outputs": cfg.get("outputs"),
        "image_size": cfg.get("preprocessing", {}).get("image_size"),
        "weights_precision": cfg.get("weights_precision", "fp32"),
        "architecture": cfg.get("model_spec"),
        "size_bytes": sum(f["bytes"] for f in files.values()),
        "files": files,
        "val_metrics": meta.get("val_metrics"),
        "card": card,
    }
