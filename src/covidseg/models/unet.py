"""The reference U-Net (Ronneberger et al., 2015), small, as the reference system describes it.

Encoder: three blocks of two 3x3 convolutions with ReLU (32, 64, 128 filters), each followed by
2x2 max-pooling; a bottleneck of two 3x3 convolutions with 256 filters; a decoder that upsamples
with a 2x2 transposed convolution, concatenates the encoder features of the same level and
applies two 3x3 convolutions with ReLU; a 1x1 convolution to one output channel.

Weights are initialised as in the 2015 paper (He: Gaussian, std sqrt(2 / fan_in)).
Where we deviate from the 2015 paper, as the reference does: convolutions are zero-padded
("same"), so the output has the input's size and no cropping is needed, and there is no
normalisation layer. The network returns logits; apply a sigmoid for probabilities (the loss
uses the numerically stable ``BCEWithLogits``, which equals BCE on the sigmoid output).

Shape:
    input ``(N, 1, H, W)`` with H and W divisible by 8; output ``(N, 1, H, W)`` logits.
"""

from __future__ import annotations

import torch
from torch import nn


def double_conv(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, 3, padding=1),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """Reference U-Net. ``base_channels=32`` gives the 32/64/128 encoder and 256 bottleneck.

    Example:
        >>> net = UNet()
        >>> net(torch.zeros(1, 1, 256, 256)).shape
        torch.Size([1, 1, 256, 256])
    """

    def __init__(self, in_channels: int = 1, classes: int = 1, base_channels: int = 32) -> None:
        super().__init__()
        c1, c2, c3, c4 = (base_channels * m for m in (1, 2, 4, 8))
        self.enc1 = double_conv(in_channels, c1)
        self.enc2 = double_conv(c1, c2)
        self.enc3 = double_conv(c2, c3)
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = double_conv(c3, c4)
        self.up3 = nn.ConvTranspose2d(c4, c3, 2, stride=2)
        self.dec3 = double_conv(c3 * 2, c3)
        self.up2 = nn.ConvTranspose2d(c3, c2, 2, stride=2)
        self.dec2 = double_conv(c2 * 2, c2)
        self.up1 = nn.ConvTranspose2d(c2, c1, 2, stride=2)
        self.dec1 = double_conv(c1 * 2, c1)
        self.head = nn.Conv2d(c1, classes, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He initialisation, as in the U-Net paper: Gaussian weights with std sqrt(2 / fan_in), zero bias.

        PyTorch's default (uniform with variance 1 / (3 fan_in)) shrinks the signal through the
        15 ReLU convolutions; the network then sits at the all-background solution for many epochs.
        """
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 8 or x.shape[-2] % 8:
            raise ValueError(f"UNet input height and width must be divisible by 8, got {tuple(x.shape[-2:])}")
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        b = self.bottleneck(self.pool(e3))
        d3 = self.dec3(torch.cat([self.up3(b), e3], dim=1))
        d2 = self.dec2(torch.cat([self.up2(d3), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.head(d1)
