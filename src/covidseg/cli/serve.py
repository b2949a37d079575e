"""``covidseg serve``, ``models`` and ``presets``."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path
from typing import Any

from covidseg import __version__
from covidseg.cli.common import (
    positive_float,
    setup_logging,
    whole_number,
)
from covidseg.errors import CovidsegError


def cmd_models(a: argparse.Namespace) -> int:
    from covidseg.inference.builtin import builtin_names, describe
    from covidseg.models import list_models

    print("built-in models (trained, ready for 'covidseg predict XRAY --out DIR' and 'covidseg serve'):")
    for name in builtin_names():
        d = describe(name)
        vm = d["val_metrics"] or {}
        seg, every = vm.get("per_image_covid", {}).get("dice"), vm.get("per_image", {}).get("dice")
        figure = f", Val per-image Dice {seg:.3f} over COVID-19 X-rays" if seg is not None else ""
        figure += f", {every:.3f} over all" if seg is not None and every is not None else ""
        figure += " (post-processing tuned there: in-sample; the card gives the cross-fitted figures)" if figure else ""
        default = " (default)" if d["default"] else ""
        print(f"  {name}{default}: {d['title']}")
        print(
            f"    outputs {'+'.join(d['outputs'])}, input {d['image_size']}x{d['image_size']}, "
            f"{d['size_bytes'] / 1e6:.1f} MB ({d['weights_precision']} weights){figure}"
        )
        print(f"    model card: {Path(d['path']) / 'MODEL_CARD.md'}")
    if not builtin_names():
        print("  none installed")
    print("\narchitectures to train (model.name):")
    for name, desc in list_models().items():
        print(f"  {name:<22} {desc}")
    if a.encoders:
        from covidseg.models.smp_models import encoder_names

        print("\nencoders for smp-* models (model.encoder_name):")
        print("  " + ", ".join(encoder_names()))
        print("  and any timm model as tu-<name> (smp's universal encoder), e.g. tu-regnetx_002")
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    import uvicorn

    from covidseg.inference.builtin import describe_bundle, resolve_model
    from covidseg.inference.bundle import is_bundle
    from covidseg.predict import Predictor
    from covidseg.serve.app import LOOPBACK_HOSTS, Limits, create_app

    setup_logging(a.verbose)
    path = resolve_model(a.model)
    predictor = Predictor.load(path)
    card = describe_bundle(path) if is_bundle(path) else {"name": path.name, "kind": "run folder"}
    card.pop("path", None)  # the server's folders are not the client's business
    card["covidseg_version"] = __version__
    limits = Limits(int(a.max_upload_mb * 1e6), a.max_pixels, a.queue)
    loopback = a.host in LOOPBACK_HOSTS
    app = create_app(predictor, card, limits, LOOPBACK_HOSTS if loopback else None)
    _check_listen(a.host, a.port)
    print(f"covidseg viewer on http://{a.host}:{a.port}/ (model {predictor.name}); Ctrl-C stops it")
    uvicorn.run(app, host=a.host, port=a.port, log_level="info" if a.verbose else "warning")
    return 0


def _check_listen(host: str, port: int) -> None:
    """Fail with one line, before the server starts, when the address cannot be bound."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(infos[0][4])
    except OSError as exc:
        raise CovidsegError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def cmd_presets(a: argparse.Namespace) -> int:
    from covidseg.presets import PRESET_HELP, PRESETS

    for name, over in PRESETS.items():
        print(f"{name}: {PRESET_HELP[name]}")
        if a.verbose:
            settings = ", ".join(f"{k}={v}" for k, v in over.items()) or "(the reference settings)"
            print(textwrap.fill(settings, 100, initial_indent="    ", subsequent_indent="    "))
    if not a.verbose:
        print("\n(--verbose lists every preset's settings)")
    return 0


def _serve_parsers(sub: Any) -> None:
    """The parsers of serve, models, presets."""
    sp = sub.add_parser("serve", help="a local web viewer and JSON API: drop an X-ray, see the masks and numbers")
    sp.add_argument("model", nargs="?", help="a run folder, bundle or built-in model's name (default: built-in)")
    sp.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    sp.add_argument("--port", type=whole_number(1, 65535, "a port"), default=8000, help="port (default 8000)")
    sp.add_argument("--max-upload-mb", type=positive_float, default=32.0, help="largest upload (default 32 MB)")
    sp.add_argument(
        "--max-pixels",
        type=whole_number(1, 2**62, "--max-pixels"),
        help="largest image, checked before decoding (default 50 MP)",
    )
    sp.add_argument(
        "--queue",
        type=whole_number(1, 32, "the queue"),
        default=4,
        help="requests admitted at once, the running one included (1-32, default 4)",
    )
    sp.add_argument("-v", "--verbose", action="store_true", help="log every request")
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser("models", help="list the built-in trained models and the architectures to train")
    sp.add_argument("--encoders", action="store_true", help="also list the encoders of the smp-* models")
    sp.set_defaults(func=cmd_models)
    sp = sub.add_parser("presets", help="list the presets: what each is for")
    sp.add_argument("-v", "--verbose", action="store_true", help="also every preset's settings")
    sp.set_defaults(func=cmd_presets)
