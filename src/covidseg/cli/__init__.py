"""The ``covidseg`` command: argument parsing only; every command calls a library function.

One module per group of commands (:mod:`covidseg.cli.data`, ``train``, ``evaluate``, ``predict``,
``study``, ``serve``); :mod:`covidseg.cli.common` holds what they share.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from covidseg import __version__
from covidseg.cli.common import TUNE_METRICS, setup_logging
from covidseg.cli.data import _data_parsers
from covidseg.cli.evaluate import _evaluate_parser
from covidseg.cli.predict import _predict_parsers
from covidseg.cli.serve import _serve_parsers
from covidseg.cli.study import _study_parsers
from covidseg.cli.train import _train_parser
from covidseg.errors import CovidsegError

__all__ = ["TUNE_METRICS", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="covidseg", description="COVID-19 infection segmentation on chest X-rays.")
    p.add_argument("--version", action="version", version=f"covidseg {__version__}")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _data_parsers(sub)
    _train_parser(sub)
    _evaluate_parser(sub)
    _predict_parsers(sub)
    _study_parsers(sub)
    _serve_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if not logging.getLogger("covidseg").handlers:
        setup_logging(getattr(a, "verbose", False))
    code = _run(a)
    if a.command == "train":
        from covidseg.engine.distributed import exit_worker, started_by_torchrun

        if started_by_torchrun():
            exit_worker(code)
    return code


def _check_out(a: argparse.Namespace) -> None:
    """A writing command's --out must be a folder (new or existing), never a file."""
    out = getattr(a, "out", None)
    if out and Path(out).exists() and not Path(out).is_dir():
        raise CovidsegError(f"--out {out} is a file; give a folder")


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a scheduler's kill, ``timeout``, a closed terminal), raised where the
    command is, so that it ends as it does at Ctrl-C: whole files, records kept, a run resumable."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into :class:`Stopped` while a command runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise Stopped(signum)

    sigs = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]
    before = {s: signal.signal(s, stop) for s in sigs}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def _run(a: argparse.Namespace) -> int:
    try:
        _check_out(a)
        if getattr(a, "command", "") == "serve":  # uvicorn handles its own signals
            return a.func(a)
        with _stop_on_signals():
            return a.func(a)
    except CovidsegError as exc:
        if a.debug:
            raise
        print(f"covidseg: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away ('covidseg models | head'): nothing to say
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silences the flush at exit
        return 0
    except OSError as exc:  # permission denied, a full or read-only disk, a path that is a file
        if a.debug:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        print(f"covidseg: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        then = {
            "train": "; the run continues with 'covidseg train --out RUN --resume'",
            "sweep": "; the same command again continues it",
            "predict": "; the records of the X-rays done, if any, are in the output folder's predictions.jsonl",
        }.get(getattr(a, "command", ""), "")
        if isinstance(exc, Stopped):
            print(f"covidseg: stopped by {signal.Signals(exc.signum).name}{then}", file=sys.stderr)
            return 128 + exc.signum
        print(f"covidseg: interrupted{then}", file=sys.stderr)
        return 130
