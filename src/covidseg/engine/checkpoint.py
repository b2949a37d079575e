"""Checkpoints: atomic writes, safe loads, and rebuilding a run's model.

A checkpoint is a plain dict of tensors and Python values, loaded with
``torch.load(weights_only=True)``, so an untrusted file cannot run code:
``{"format", "format_version", "model", "model_spec", "config", "optimizer", "scaler",
"epoch", "best", "history"}``. A loaded one also carries ``file_sha256`` (:data:`FILE_SHA256`),
the SHA-256 of the bytes it was read from: the weights used are the weights named, even when
training replaces the file in between.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from covidseg.atomic import sync_file, sync_folder, umask
from covidseg.config import Config, from_dict
from covidseg.errors import CheckpointError, ConfigError
from covidseg.models import create_model

FORMAT = "covidseg-checkpoint"
FORMAT_VERSION = 1
FILE_SHA256 = "file_sha256"  # set by load_checkpoint, never saved


def remove_leftovers(folder: str | Path) -> int:
    """Delete the temporary files of checkpoint writes that a killed run left (``.best.pt.xxxx``);
    called under the run folder's lock, when no write can be in progress. Returns how many."""
    leftovers = [f for f in Path(folder).glob(".*.pt.*") if f.is_file()]
    for f in leftovers:
        f.unlink(missing_ok=True)
    return len(leftovers)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` through a temporary file and a rename, both synced to the disk:
    never half a file, nor an empty one after a power cut."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        saved = {k: v for k, v in state.items() if k != FILE_SHA256}  # a loaded checkpoint's hash is not its own
        torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **saved}, tmp)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; a checkpoint is as readable as the run's other files
        sync_file(tmp)
        os.replace(tmp, path)
        sync_folder(path.parent)
    except (RuntimeError, OSError) as exc:  # a failed write (a full disk, say): torch's RuntimeError or fsync's
        Path(tmp).unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free
        raise CheckpointError(
            f"could not write {path} ({free / 2**20:.0f} MiB free on that disk): {str(exc).splitlines()[0][:160]}"
        ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a covidseg checkpoint with ``weights_only=True``.

    Raises:
        CheckpointError: the file is missing, unreadable, or not a covidseg checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        data = path.read_bytes()  # once: hashed and loaded from the same bytes
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a covidseg checkpoint or is damaged ({first[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a covidseg checkpoint (it was written by another program)")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer covidseg (format {state['format_version']}); upgrade covidseg"
        )
    state[FILE_SHA256] = hashlib.sha256(data).hexdigest()
    return state


def checkpoint_path(run_dir: str | Path, which: str = "best") -> Path:
    """``RUN_DIR/checkpoints/{best,last}.pt``; a path to a ``.pt`` file is taken as is."""
    p = Path(run_dir)
    if p.suffix == ".pt":
        return p
    if not p.is_dir():
        raise CheckpointError(f"run folder {p} does not exist; train one with 'covidseg train --out {p}'")
    ckpt = p / "checkpoints" / f"{which}.pt"
    if not ckpt.is_file():
        raise CheckpointError(
            f"{p} holds no checkpoint ({ckpt} is missing); "
            "is it a covidseg run folder whose training finished an epoch?"
        )
    return ckpt


def model_from_state(state: dict[str, Any]) -> nn.Module:
    try:
        model = create_model(state["model_spec"])
        model.load_state_dict(state["model"])
    except (KeyError, ConfigError, RuntimeError) as exc:
        raise CheckpointError(f"the checkpoint's weights do not fit its model spec: {str(exc)[:200]}") from None
    return model.eval()


def load_run(
    run_dir: str | Path, which: str = "best", map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, Config, dict[str, Any]]:
    """Rebuild a run's model and config from its folder (or a checkpoint file)."""
    state = load_checkpoint(checkpoint_path(run_dir, which), map_location)
    try:
        cfg = from_dict(state["config"])
    except (KeyError, ConfigError) as exc:
        raise CheckpointError(f"the checkpoint's config cannot be read: {exc}") from None
    return model_from_state(state), cfg, state
