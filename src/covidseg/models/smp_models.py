"""segmentation-models-pytorch architectures in the registry, with one input channel.

Names are ``smp-<arch>`` (``smp-unet``, ``smp-unetplusplus``, ``smp-fpn``, ``smp-deeplabv3plus``);
any smp encoder works (``model.encoder_name``: resnet18/34/50, densenet121, efficientnet-b0,
mobilenet_v2, ...; see ``covidseg models --encoders``), and any timm model through smp's
universal encoder as ``tu-<timm name>`` (``tu-regnetx_002``, ``tu-mobilenetv3_large_100``).
With ``model.encoder_weights=imagenet`` smp downloads the encoder's pre-trained weights (and, for
one input channel, sums the first convolution's RGB filters); where nothing can be downloaded that
fails with a clear message.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from covidseg.errors import ConfigError

ARCHITECTURES = {
    "smp-unet": ("Unet", "U-Net with a pre-trainable encoder (segmentation-models-pytorch)"),
    "smp-unetplusplus": ("UnetPlusPlus", "U-Net++: nested dense skip pathways (segmentation-models-pytorch)"),
    "smp-fpn": ("FPN", "Feature Pyramid Network (segmentation-models-pytorch)"),
    "smp-deeplabv3plus": ("DeepLabV3Plus", "DeepLabV3+: atrous spatial pyramid pooling (segmentation-models-pytorch)"),
}


def _smp() -> Any:
    return importlib.import_module("segmentation_models_pytorch")


def encoder_names() -> list[str]:
    return list(_smp().encoders.get_encoder_names())


def known_encoder(name: str) -> bool:
    """An smp encoder, or ``tu-`` and a model timm knows (smp's universal encoder)."""
    if name in encoder_names():
        return True
    if not name.startswith("tu-"):
        return False
    import timm

    return bool(timm.is_model(name[3:]))


class _ImageHeadOutput:
    """Mix-in for an smp network built with a classification head (``aux_params``): its image
    logit is returned as one more output channel, the same value at every pixel, so that every
    path that carries (N, C, S, S) maps (training, export, backends) carries it unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        masks, logit = super().forward(x)  # type: ignore[misc]
        return torch.cat([masks, logit[:, :, None, None].expand(-1, -1, *masks.shape[2:])], dim=1)


def _arch_class(smp: Any, arch: str, image_head: bool) -> Any:
    base = getattr(smp, arch)
    return type(f"{arch}WithImageHead", (_ImageHeadOutput, base), {}) if image_head else base


def build_smp(
    arch: str,
    encoder_name: str = "resnet34",
    encoder_weights: str | None = None,
    in_channels: int = 1,
    classes: int = 1,
    image_head: bool = False,
) -> nn.Module:
    """Build an smp model; errors name what to change. ``image_head``: an image-level logit from
    the encoder's deepest features (average pooling, dropout 0.2, one linear layer), returned as
    the last output channel."""
    smp = _smp()
    if not known_encoder(encoder_name):
        raise ConfigError(
            f"unknown encoder {encoder_name!r}; see 'covidseg models --encoders' for the list "
            "(or 'tu-' and a timm model name)"
        )
    timm_encoder = encoder_name.startswith("tu-")
    if timm_encoder and encoder_weights not in (None, "imagenet"):
        raise ConfigError(f"encoder {encoder_name!r} takes model.encoder_weights None or imagenet (timm's default tag)")
    aux = {"aux_params": {"classes": 1, "pooling": "avg", "dropout": 0.2}} if image_head else {}
    try:
        return _arch_class(smp, arch, image_head)(
            encoder_name=encoder_name, encoder_weights=encoder_weights, in_channels=in_channels, classes=classes, **aux
        )
    except KeyError as exc:
        raise ConfigError(f"encoder {encoder_name!r} has no {encoder_weights!r} weights ({exc})") from None
    except (OSError, RuntimeError, ValueError, TypeError, AttributeError, ConnectionError) as exc:
        if timm_encoder and (encoder_weights is None or isinstance(exc, (TypeError, AttributeError))):
            raise ConfigError(
                f"smp cannot use timm's {encoder_name[3:]!r} as an encoder ({str(exc).splitlines()[0][:200]}); "
                "it needs a convolutional or hierarchical network with feature maps at strides 2 to 32"
            ) from None
        if encoder_weights is None or isinstance(exc, (TypeError, AttributeError)):
            raise
        raise ConfigError(
            f"could not load the {encoder_weights!r} weights of encoder {encoder_name!r}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}. "
            "Without network access, train from scratch (model.encoder_weights=None) or put the "
            "weights into the Hugging Face / torch hub cache first."
        ) from None
