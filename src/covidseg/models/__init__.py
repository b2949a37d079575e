"""Model registry: ``create_model(spec)`` builds a network from a plain-dict spec.

A spec is ``{"name": ..., **kwargs}``; it is stored in every checkpoint so a run folder can
rebuild its network without the caller knowing the class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from covidseg.config import Config
from covidseg.errors import ConfigError
from covidseg.models.smp_models import ARCHITECTURES, build_smp
from covidseg.models.unet import UNet

_REGISTRY: dict[str, tuple[Callable[..., nn.Module], str]] = {}


def register(name: str, description: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = (fn, description)
        return fn

    return deco


def list_models() -> dict[str, str]:
    """Registered model names with a one-line description."""
    return {name: desc for name, (_, desc) in sorted(_REGISTRY.items())}


def create_model(spec: dict[str, Any]) -> nn.Module:
    """Build a model from ``{"name": ..., **kwargs}``.

    Raises:
        ConfigError: unknown name (the message lists the registered ones) or bad arguments.
    """
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    try:
        return _REGISTRY[name][0](**spec)
    except TypeError as exc:
        raise ConfigError(f"model {name!r}: {exc}") from None


def model_spec(cfg: Config, with_weights: bool = True) -> dict[str, Any]:
    """The registry spec for a config's model section.

    ``with_weights=False`` drops the pre-trained weight source: the spec stored in a checkpoint
    rebuilds the network and then loads the checkpoint's own weights, without any download.
    """
    m = cfg.model
    if m.name not in _REGISTRY:
        raise ConfigError(f"unknown model {m.name!r}; available: {', '.join(list_models())}")
    head = "covid" in m.target_list
    spec: dict[str, Any] = {"name": m.name, "in_channels": 1, "classes": len(m.target_list) - head}
    if m.name == "unet":
        if head:
            raise ConfigError("the image-level COVID-19 head (model.targets ...+covid) needs an smp-* network")
        spec["base_channels"] = m.base_channels
    else:
        spec["encoder_name"] = m.encoder_name
        spec["encoder_weights"] = m.encoder_weights if with_weights else None
        if head:
            spec["image_head"] = True
    return spec


@register(
    "unet", "reference U-Net: encoder 32/64/128, bottleneck 256, skip concatenation (model.base_channels scales it)"
)
def _unet(in_channels: int = 1, classes: int = 1, base_channels: int = 32) -> nn.Module:
    return UNet(in_channels=in_channels, classes=classes, base_channels=base_channels)


def _register_smp(name: str, arch: str, description: str) -> None:
    def build(
        encoder_name: str = "resnet34",
        encoder_weights: str | None = None,
        in_channels: int = 1,
        classes: int = 1,
        image_head: bool = False,
    ) -> nn.Module:
        return build_smp(arch, encoder_name, encoder_weights, in_channels, classes, image_head)

    register(name, description)(build)


for _name, (_arch, _desc) in ARCHITECTURES.items():
    _register_smp(_name, _arch, _desc)

__all__ = ["UNet", "create_model", "list_models", "model_spec", "register"]
