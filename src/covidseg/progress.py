"""A progress hook the library accepts and the CLI fills with a progress bar.

Library functions take ``progress: Progress | None``; ``progress(iterable, desc=..., total=...)``
must return an iterable over the same items. The default shows nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Progress(Protocol):
    def __call__(self, iterable: Iterable[T], *, desc: str = "", total: int | None = None) -> Iterable[T]: ...


def silent(iterable: Iterable[T], *, desc: str = "", total: int | None = None) -> Iterable[T]:
    return iterable


def set_postfix(bar: Any, **values: float) -> None:
    """Show live numbers on a tqdm-like bar; does nothing for plain iterables."""
    if hasattr(bar, "set_postfix"):
        bar.set_postfix({k: f"{v:.4f}" for k, v in values.items()}, refresh=False)
