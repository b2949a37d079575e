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


def test_export_tells_whether_onnx_finds_the_input_check_features(tmp_path) -> None:
    from covidseg.export import _onnx_difference, export_onnx

    # FPN and most encoders: the encoder's last ONNX tensor is its deepest feature map. A U-Net on
    # a four-stage timm encoder (ConvNeXt) ends its encoder with a placeholder instead: export
    # must see that (an infinite difference) and refuse to carry the input check.
    for name, encoder, same in (("smp-fpn", "tu-regnetx_002", True), ("smp-unet", "tu-convnext_atto", False)):
        net = create_model({"name": name, "encoder_name": encoder, "classes": 2}).eval()
        export_onnx(net, 64, tmp_path / f"{encoder}.onnx")
        _, _, diff = _onnx_difference(net, tmp_path / f"{encoder}.onnx", 64)
        assert (diff < 1e-4) if same else diff == float("inf")
