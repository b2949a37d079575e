"""``covidseg data``, ``synth`` and ``compact``: look at, write and shrink data sets."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from covidseg.cli.common import (
    common_options,
    progress_bar,
)


def cmd_data(a: argparse.Namespace) -> int:
    from covidseg.data.discovery import discover

    d = discover(a.root)
    kind = "SYNTHETIC set written by 'covidseg synth' (a test fixture, not X-rays)" if d.synthetic else "X-rays"
    print(f"COVID-QU-Ex layout in {d.root}: {kind}")
    print(d.table())
    for path, reason in d.skipped[: a.show_skipped]:
        print(f"  skipped {path}: {reason}")
    return 0


def cmd_synth(a: argparse.Namespace) -> int:
    from covidseg.data.synthetic import SynthSpec, write_synthetic

    spec = SynthSpec(train=a.train, val=a.val, test=a.test, seed=a.seed)
    root = write_synthetic(a.out, spec, progress_bar(a.progress))
    print(
        f"wrote a SYNTHETIC set in the COVID-QU-Ex layout ({a.train}/{a.val}/{a.test} Train/Val/Test phantoms, "
        f"marked by {root / 'SYNTHETIC.json'}) to {root}"
    )
    return 0


def cmd_compact(a: argparse.Namespace) -> int:
    from covidseg.data.compact import write_compact

    r = write_compact(a.source, a.out, tuple(a.splits), a.size, a.quality, progress_bar(a.progress))
    print(f"wrote {r.images} X-rays ({', '.join(r.splits)}) to {r.root}: {r.mib:.1f} MiB")
    print(f"JPEG quality {r.quality}: mean absolute pixel error {r.mean_abs_error:.2f}, largest {r.max_abs_error}")
    if r.skipped:
        print(f"left out {len(r.skipped)} unreadable or mismatched image(s); see compact.json")
    if a.max_mib is not None and r.mib > a.max_mib:
        print(f"error: the copy is {r.mib:.1f} MiB, over --max-mib {a.max_mib}; try a lower --quality", file=sys.stderr)
        return 1
    return 0


def _data_parsers(sub: Any) -> None:
    """The parsers of data, synth, compact."""
    sp = sub.add_parser("data", help="count the images of a COVID-QU-Ex folder per split and group")
    sp.add_argument("root", help="the dataset root, its 'Infection Segmentation Data' folder, or the nested form")
    sp.add_argument("--show-skipped", type=int, default=20, metavar="N", help="list up to N skipped files (default 20)")
    sp.set_defaults(func=cmd_data)

    sp = sub.add_parser("synth", help="write a synthetic chest X-ray set in the COVID-QU-Ex layout")
    sp.add_argument("out", help="output folder")
    sp.add_argument("--train", type=int, default=96, help="Train images (default 96)")
    sp.add_argument("--val", type=int, default=32, help="Val images (default 32)")
    sp.add_argument("--test", type=int, default=32, help="Test images (default 32)")
    sp.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    common_options(sp)
    sp.set_defaults(func=cmd_synth)

    sp = sub.add_parser(
        "compact", help="a small copy of a COVID-QU-Ex folder (JPEG X-rays, 1-bit PNG masks) to carry elsewhere"
    )
    sp.add_argument("source", help="a COVID-QU-Ex folder (any accepted root)")
    sp.add_argument("out", help="new, empty output folder")
    sp.add_argument(
        "--splits", nargs="+", default=["Train", "Val"], choices=["Train", "Val", "Test"], help="(default Train Val)"
    )
    sp.add_argument("--size", type=int, default=256, help="side in pixels the X-rays are resized to (default 256)")
    sp.add_argument("--quality", type=int, default=90, help="JPEG quality 1-95 (default 90)")
    sp.add_argument("--max-mib", type=float, help="exit with status 1 when the copy is larger than this")
    common_options(sp)
    sp.set_defaults(func=cmd_compact)
