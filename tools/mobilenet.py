"""MobileNetV2 and MobileNetV3 (Small, Large) in plain PyTorch, with torchvision's state-dict keys.

The classes mirror torchvision's module tree exactly (`features.0.0.weight`, ...,
`classifier.1.weight`), so a torchvision `.pth` state dict loads into them with strict
key checking, yet torchvision itself is never imported (it does not install beside
torch 2.13 here). Only the `features` part is used for retrieval; the classifier exists
so that the keys match one for one.

This module imports torch at the top: import it only from the converter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

ARCHITECTURES = ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")

# channels of the last feature map (the descriptor dimension)
FEATURE_CHANNELS = {"mobilenet_v2": 1280, "mobilenet_v3_small": 576, "mobilenet_v3_large": 960}


def _make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """torchvision's channel rounding (from the original TensorFlow MobileNet code)."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:  # never round down by more than 10%
        new_v += divisor
    return new_v


class ConvNormActivation(nn.Sequential):
    """Conv2d (no bias) → BatchNorm2d → optional activation: keys `.0`, `.1`, (`.2`)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: Callable[[], nn.Module] | None = nn.ReLU6,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ):
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False
            ),
            nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum),
        ]
        if activation is not None:
            layers.append(activation())
        super().__init__(*layers)
        self.out_channels = out_channels


# ---------------------------------------------------------------- MobileNetV2


class InvertedResidualV2(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvNormActivation(inp, hidden, kernel_size=1))
        layers += [
            ConvNormActivation(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision.models.mobilenet_v2 (width 1.0): `features` ends in 1280 channels after ReLU6."""

    # t (expansion), c (channels), n (repeats), s (stride of the first)
    SETTINGS = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        input_channel, last_channel = 32, 1280
        features: list[nn.Module] = [ConvNormActivation(3, input_channel, stride=2)]
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                features.append(InvertedResidualV2(input_channel, c, s if i == 0 else 1, t))
                input_channel = c
        features.append(ConvNormActivation(input_channel, last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(last_channel, num_classes))
        self.last_channel = last_channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1)).flatten(1)
        return self.classifier(x)


# ---------------------------------------------------------------- MobileNetV3


class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation with Hardsigmoid: keys `fc1`, `fc2` (1×1 convs with bias)."""

    def __init__(self, channels: int, squeeze_channels: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


class InvertedResidualV3(nn.Module):
    def __init__(self, inp: int, kernel: int, expanded: int, out: int, use_se: bool, use_hs: bool, stride: int):
        super().__init__()
        self.use_res_connect = stride == 1 and inp == out
        act = nn.Hardswish if use_hs else nn.ReLU
        norm = {"bn_eps": 0.001, "bn_momentum": 0.01}
        layers: list[nn.Module] = []
        if expanded != inp:
            layers.append(ConvNormActivation(inp, expanded, kernel_size=1, activation=act, **norm))
        layers.append(ConvNormActivation(expanded, expanded, kernel, stride, groups=expanded, activation=act, **norm))
        if use_se:
            layers.append(SqueezeExcitation(expanded, _make_divisible(expanded // 4, 8)))
        layers.append(ConvNormActivation(expanded, out, kernel_size=1, activation=None, **norm))
        self.block = nn.Sequential(*layers)
        self.out_channels = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.block(x)
        return self.block(x)


# input, kernel, expanded, output, SE, hard-swish, stride (torchvision's bneck_conf, width 1.0)
_V3_SMALL = [
    (16, 3, 16, 16, True, False, 2),
    (16, 3, 72, 24, False, False, 2),
    (24, 3, 88, 24, False, False, 1),
    (24, 5, 96, 40, True, True, 2),
    (40, 5, 240, 40, True, True, 1),
    (40, 5, 240, 40, True, True, 1),
    (40, 5, 120, 48, True, True, 1),
    (48, 5, 144, 48, True, True, 1),
    (48, 5, 288, 96, True, True, 2),
    (96, 5, 576, 96, True, True, 1),
    (96, 5, 576, 96, True, True, 1),
]
_V3_LARGE = [
    (16, 3, 16, 16, False, False, 1),
    (16, 3, 64, 24, False, False, 2),
    (24, 3, 72, 24, False, False, 1),
    (24, 5, 72, 40, True, False, 2),
    (40, 5, 120, 40, True, False, 1),
    (40, 5, 120, 40, True, False, 1),
    (40, 3, 240, 80, False, True, 2),
    (80, 3, 200, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1),
    (80, 3, 480, 112, True, True, 1),
    (112, 3, 672, 112, True, True, 1),
    (112, 5, 672, 160, True, True, 2),
    (160, 5, 960, 160, True, True, 1),
    (160, 5, 960, 160, True, True, 1),
]


class MobileNetV3(nn.Module):
    """torchvision.models.mobilenet_v3_small / _large: `features` ends in 576 / 960 channels after Hardswish."""

    def __init__(self, variant: str = "large", num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        if variant not in ("small", "large"):
            raise ValueError(f"MobileNetV3 variant must be 'small' or 'large', not {variant!r}")
        settings = _V3_SMALL if variant == "small" else _V3_LARGE
        last_channel = 1024 if variant == "small" else 1280
        norm = {"bn_eps": 0.001, "bn_momentum": 0.01}
        features: list[nn.Module] = [ConvNormActivation(3, 16, 3, 2, activation=nn.Hardswish, **norm)]
        for cfg in settings:
            features.append(InvertedResidualV3(*cfg))
        last_in = settings[-1][3]
        features.append(ConvNormActivation(last_in, 6 * last_in, kernel_size=1, activation=nn.Hardswish, **norm))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(6 * last_in, last_channel),
            nn.Hardswish(),
            nn.Dropout(p=dropout),
            nn.Linear(last_channel, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x)).flatten(1)
        return self.classifier(x)


# ---------------------------------------------------------------- building and loading


def build(arch: str) -> nn.Module:
    """A randomly initialised network of `arch`, with torchvision's module tree."""
    if arch == "mobilenet_v2":
        return MobileNetV2()
    if arch == "mobilenet_v3_small":
        return MobileNetV3("small")
    if arch == "mobilenet_v3_large":
        return MobileNetV3("large")
    raise ValueError(f"unknown architecture {arch!r} (choose from {', '.join(ARCHITECTURES)})")


def detect_architecture(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Which of ARCHITECTURES a torchvision state dict belongs to, from its keys and shapes."""
    if "features.1.conv.0.0.weight" in state_dict:
        return "mobilenet_v2"
    if "features.1.block.0.0.weight" in state_dict:
        # the last features stage is a 1×1 conv to 576 (small) or 960 (large) channels
        last = max(int(k.split(".")[1]) for k in state_dict if k.startswith("features."))
        channels = state_dict[f"features.{last}.0.weight"].shape[0]
        for arch in ("mobilenet_v3_small", "mobilenet_v3_large"):
            if FEATURE_CHANNELS[arch] == channels:
                return arch
    raise ValueError(
        "cannot tell the architecture from the weights' keys: expected a torchvision "
        f"MobileNetV2 or MobileNetV3 state dict (one of {', '.join(ARCHITECTURES)})"
    )


def load_features(arch: str, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """`arch`'s `features` Sequential with every `features.*` tensor loaded strictly.

    Missing or unexpected `features.*` keys and any shape difference are errors; the
    classifier's keys are ignored (retrieval drops the classifier).
    """
    net = build(arch)
    feats = {k[len("features.") :]: v for k, v in state_dict.items() if k.startswith("features.")}
    if not feats:
        raise ValueError("the weights hold no 'features.*' keys: not a torchvision MobileNet state dict")
    net.features.load_state_dict(feats, strict=True)
    return net.features


class Embedder(nn.Module):
    """RGB pixels 0..255 (NCHW) → normalization (ImageNet's by default) → features → map or pooled vector.

    `output_kind` is "feature_map" (N, C, h, w) or "vector" (N, C), the vector being the
    global average of the map, computed inside the network.
    """

    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)

    def __init__(
        self,
        features: nn.Module,
        output_kind: str = "feature_map",
        mean: tuple[float, ...] = MEAN,
        std: tuple[float, ...] = STD,
    ):
        super().__init__()
        if output_kind not in ("feature_map", "vector"):
            raise ValueError(f"output_kind must be 'feature_map' or 'vector', not {output_kind!r}")
        self.features = features
        self.output_kind = output_kind
        mean = torch.tensor(mean).view(1, 3, 1, 1)
        std = torch.tensor(std).view(1, 3, 1, 1)
        # (x / 255 - mean) / std  ==  x * scale + shift
        self.register_buffer("scale", 1.0 / (255.0 * std))
        self.register_buffer("shift", -mean / std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.features(x * self.scale + self.shift)
        if self.output_kind == "vector":
            y = y.mean(dim=(2, 3))
        return y
