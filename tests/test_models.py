from __future__ import annotations

import pytest
import torch
from torch import nn

from covidseg.errors import ConfigError
from covidseg.models import UNet, create_model, list_models


def test_reference_unet_widths_and_shape() -> None:
    net = UNet()
    convs = [m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)]
    # encoder 32,32,64,64,128,128; bottleneck 256,256; decoder 128,128,64,64,32,32; head 1
    assert convs == [32, 32, 64, 64, 128, 128, 256, 256, 128, 128, 64, 64, 32, 32, 1]
    x = torch.rand(2, 1, 64, 64)
    assert net(x).shape == (2, 1, 64, 64)
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.rand(1, 1, 60, 60))


@pytest.mark.parametrize("name", list(list_models()))
def test_every_registered_model_runs_forward_and_backward(name: str) -> None:
    torch.manual_seed(0)
    net = create_model({"name": name, "in_channels": 1, "classes": 1})
    x = torch.rand(2, 1, 64, 64)
    out = net(x)
    assert out.shape == (2, 1, 64, 64) and torch.isfinite(out).all()
    out.mean().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_unknown_model_lists_the_registered_ones() -> None:
    with pytest.raises(ConfigError, match="available: .*unet"):
        create_model({"name": "resnet9000"})


def test_timm_encoders_build_through_the_universal_prefix() -> None:
    net = create_model({"name": "smp-fpn", "encoder_name": "tu-regnetx_002", "in_channels": 1, "classes": 2})
    assert net(torch.rand(1, 1, 64, 64)).shape == (1, 2, 64, 64)
    assert net.encoder.model.stem.conv.in_channels == 1  # one input channel, as every covidseg network
    for bad in ("tu-regnetx_9000", "regnetx_002"):  # an unknown timm model; a timm name without the prefix
        with pytest.raises(ConfigError, match=f"unknown encoder '{bad}'"):
            create_model({"name": "smp-fpn", "encoder_name": bad})
    with pytest.raises(ConfigError, match="cannot use timm's 'vit_tiny_patch16_224'"):  # no feature pyramid
        create_model({"name": "smp-fpn", "encoder_name": "tu-vit_tiny_patch16_224"})
    with pytest.raises(ConfigError, match="encoder_weights None or imagenet"):
        create_model({"name": "smp-fpn", "encoder_name": "tu-regnetx_002", "encoder_weights": "ssl"})


def test_exported_onnx_gives_the_input_check_features_of_pytorch(tmp_path) -> None:
    import onnx

    from covidseg.export import _onnx_difference, export_onnx
    from covidseg.inference.features import FEATURES_OUTPUT

    # export_onnx writes the hooked feature map as the graph output ``features``, so every encoder
    # gives PyTorch's features, a U-Net on a four-stage timm encoder (ConvNeXt) among them.
    for name, encoder in (("smp-fpn", "tu-regnetx_002"), ("smp-unet", "tu-convnext_atto")):
        net = create_model({"name": name, "encoder_name": encoder, "classes": 2}).eval()
        path = export_onnx(net, 64, tmp_path / f"{encoder}.onnx")
        assert [o.name for o in onnx.load(str(path)).graph.output] == ["logits", FEATURES_OUTPUT]
        assert not any(net.encoder._forward_hooks.values())  # export leaves no hook behind
        _, _, diff = _onnx_difference(net, path, 64)
        assert diff < 1e-4
        # A bundle from before that output (the built-in models) gets the encoder's last graph
        # tensor: right for FPN; the four-stage U-Net ends its encoder with a placeholder, which
        # export must see (an infinite difference) to refuse to carry the input check.
        path = export_onnx(net, 64, tmp_path / f"{encoder}-logits-only.onnx", features=False)
        _, _, diff = _onnx_difference(net, path, 64)
        assert (diff < 1e-4) if encoder == "tu-regnetx_002" else diff == float("inf")
