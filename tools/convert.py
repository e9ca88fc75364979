"""The offline converter: MobileNet / EfficientNet-Lite0 weights → a full-integer LiteRT model and its card.

    python tools/fetch_weights.py --out weights/mobilenet_v2-b0353104.pth
    python -m tools.convert --weights weights/mobilenet_v2-b0353104.pth \\
        --calibration edge_retrieval/data/photos --heldout 3 --out models/mobilenet_v2_int8.tflite

What it does, in order:
1. builds the network (tools/mobilenet.py: torchvision's module tree in plain torch; or
   tools/efficientnet_lite.py: `--arch efficientnet_lite0`, weights from
   `python tools/fetch_weights.py --arch efficientnet_lite0`), loads every feature tensor
   strictly and drops the classifier;
2. wraps it: NHWC float RGB 0..255 in, the network's mean/std baked in (ImageNet's for
   MobileNet, TensorFlow's (x - 127) / 128 for Lite0), the last feature map (NHWC) or its
   global average out;
3. converts it with litert_torch to a float .tflite (kept in a temporary folder);
4. calibrates on real photos (resized by stretching to the input size; deterministic random
   crops and flips are added when there are fewer than 64) and quantizes with
   ai_edge_quantizer's static int8 recipe: int8 weights, activations, input and output. The
   input tensor's range is set to the full pixel range 0..255 rather than the calibrated one,
   so no pixel value saturates;
5. checks with the LiteRT interpreter that input and output are integer tensors;
6. validates against the PyTorch model on held-out photos (cosine of the pooled descriptor and
   of the raw map), measures size and latency, and writes `NAME.tflite` beside `NAME.json`
   only when the descriptor agreement reaches --min-cosine.

torch, litert_torch and ai_edge_quantizer (the `[convert]` extra) are imported only when a
conversion runs; importing this module needs only NumPy and OpenCV.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as `python tools/convert.py`: make `tools` and `edge_retrieval` importable
    sys.path.insert(0, str(REPO))

from edge_retrieval import preprocess  # noqa: E402
from edge_retrieval.descriptors import pool  # noqa: E402
from edge_retrieval.embedder import load_interpreter  # noqa: E402
from edge_retrieval.enroll import list_images as _images_under  # noqa: E402
from edge_retrieval.errors import BadImageError, ModelError  # noqa: E402
from edge_retrieval.modelcard import ModelCard, sha256_file  # noqa: E402
from tools import fetch_weights  # noqa: E402  (standard library only)

ARCHITECTURES = ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_lite0")
OUTPUT_KINDS = ("feature_map", "vector")
MIN_CALIBRATION_SAMPLES = 64  # photos are topped up with random crops/flips to this many
AUGMENT_SEED = 0
INPUT_RANGE = (0.0, 255.0)  # RGB pixels; the int8 input covers exactly this range
DEFAULT_MIN_COSINE = 0.98  # float-vs-int8 descriptor agreement below which nothing is written
LATENCY_RUNS = 20
LATENCY_THREADS = 2
CONVERT_EXTRA_HINT = "the converter needs the [convert] extra: pip install -e '.[convert]'"


class ConversionError(ModelError):
    """The conversion ran but its result is not acceptable (not full-integer, poor agreement, ...)."""


def require_converter() -> dict[str, Any]:
    """Import the heavy converter packages, or raise ImportError naming the extra to install."""
    modules = {}
    for name in ("torch", "litert_torch", "ai_edge_quantizer", "ai_edge_litert"):
        try:
            modules[name] = importlib.import_module(name)
        except ImportError as e:
            raise ImportError(f"{CONVERT_EXTRA_HINT} (cannot import {name}: {e})") from e
    return modules


def _interpreter(model_path: str | Path, num_threads: int = LATENCY_THREADS):
    return load_interpreter(str(model_path), num_threads)  # the runtime's own loader, tensors allocated


# ---------------------------------------------------------------- images


def list_images(folder: str | Path) -> list[Path]:
    """Every image under `folder` (recursive, as `enroll` finds them); an error if there is none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadImageError(str(folder), "is not a folder of images")
    files = _images_under(folder)
    if not files:
        raise BadImageError(str(folder), "holds no images")
    return files


def split_heldout(files: list[Path], heldout: int) -> tuple[list[Path], list[Path]]:
    """(calibration, held out): `heldout` files spread evenly over the sorted list."""
    if heldout < 0 or heldout >= len(files):
        raise ValueError(f"--heldout must be between 0 and {len(files) - 1} for {len(files)} images, not {heldout}")
    picked = {int((i + 0.5) * len(files) / heldout) for i in range(heldout)} if heldout else set()
    calibration = [f for i, f in enumerate(files) if i not in picked]
    held = [f for i, f in enumerate(files) if i in picked]
    return calibration, held


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as an RGB uint8 array (H, W, 3)."""
    return cv2.cvtColor(preprocess.read_image(path), cv2.COLOR_BGR2RGB)


def to_input(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Stretch an RGB image to the model input exactly as the runtime does: float32 (1, height, width, 3), 0..255."""
    return preprocess.resize(rgb, width, height).astype(np.float32)[None]


def calibration_samples(
    images: list[np.ndarray], height: int, width: int, minimum: int = MIN_CALIBRATION_SAMPLES, seed: int = AUGMENT_SEED
) -> list[np.ndarray]:
    """Each image stretched whole, then, while fewer than `minimum`, deterministic crops/flips.

    A crop keeps 35..100% of the area with an aspect ratio within 3/4..4/3 of the
    image's; half of them are mirrored left-right. Images are visited round-robin.
    """
    samples = [to_input(im, height, width) for im in images]
    rng = np.random.default_rng(seed)
    i = 0
    while len(samples) < minimum:
        im = images[i % len(images)]
        i += 1
        h, w = im.shape[:2]
        area = rng.uniform(0.35, 1.0)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch = int(round(min(h, h * np.sqrt(area / aspect))))
        cw = int(round(min(w, w * np.sqrt(area * aspect))))
        y = int(rng.integers(0, h - ch + 1))
        x = int(rng.integers(0, w - cw + 1))
        crop = im[y : y + ch, x : x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        samples.append(to_input(np.ascontiguousarray(crop), height, width))
    return samples


# ---------------------------------------------------------------- descriptors


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else 0.0


# ---------------------------------------------------------------- the network


def load_state_dict(path: str | Path) -> dict[str, Any]:
    """A torchvision state dict from a .pth file (tensors only, no pickled code)."""
    import torch

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(
            f"{path}: weights file not found (python tools/fetch_weights.py fetches MobileNetV2)"
        ) from None
    except Exception as e:  # a corrupt or non-tensor pickle
        raise ModelError(f"{path}: not a loadable PyTorch state dict ({e})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelError(f"{path}: expected a state dict (a mapping of tensors), found {type(obj).__name__}")
    return dict(obj)


def detect_architecture(state_dict: dict[str, Any]) -> str:
    """Which of ARCHITECTURES a state dict belongs to (ValueError when none)."""
    from tools import efficientnet_lite, mobilenet

    if efficientnet_lite.is_efficientnet_lite0(state_dict):
        return efficientnet_lite.ARCHITECTURE
    return mobilenet.detect_architecture(state_dict)


def build_module(arch: str, state_dict: dict[str, Any], output_kind: str):
    """The network to convert: NHWC float RGB 0..255 in; NHWC map (1, h, w, C) or vector (1, C) out."""
    import litert_torch

    from tools import efficientnet_lite, mobilenet

    norm = {}
    try:
        if arch == efficientnet_lite.ARCHITECTURE:
            features = efficientnet_lite.load_features(state_dict)
            norm = {"mean": efficientnet_lite.MEAN, "std": efficientnet_lite.STD}
        else:
            features = mobilenet.load_features(arch, state_dict)
    except (RuntimeError, ValueError) as e:
        raise ModelError(f"the weights do not fit {arch}: {e}") from None
    embedder = mobilenet.Embedder(features, output_kind, **norm).eval()
    outputs = [0] if output_kind == "feature_map" else None
    return litert_torch.to_channel_last_io(embedder, args=[0], outputs=outputs).eval()


def torch_forward(module, batch: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return module(torch.from_numpy(np.ascontiguousarray(batch))).numpy()


# ---------------------------------------------------------------- conversion steps


def export_float(module, height: int, width: int, path: Path) -> None:
    import litert_torch
    import torch

    sample = torch.zeros(1, height, width, 3, dtype=torch.float32)
    litert_torch.convert(module.eval(), (sample,)).export(str(path))


def signature_of(model_path: Path) -> tuple[str, str, str]:
    """(signature key, input name, input tensor name) of a single-input, single-signature model."""
    interp = _interpreter(model_path)
    signatures = interp.get_signature_list()
    if len(signatures) != 1:
        raise ConversionError(f"{model_path}: expected one signature, found {sorted(signatures)}")
    key, io = next(iter(signatures.items()))
    if len(io["inputs"]) != 1:
        raise ConversionError(f"{model_path}: expected one input in signature {key!r}, found {io['inputs']}")
    details = interp.get_input_details()
    return key, io["inputs"][0], details[0]["name"]


def calibrate_min_max(qt, samples: list[np.ndarray], signature_key: str, input_name: str) -> dict[str, Any]:
    """Per-tensor min/max over *all* samples.

    `Quantizer.calibrate` folds samples into a moving average (smoothing 0.95), which lets
    the last ~20 samples set the ranges; calibrating one sample at a time and keeping the
    overall min and max is order-independent and agrees better with the float model
    (held-out GeM cosine 0.991 vs 0.987 for MobileNetV2 on the repo photos).
    """
    merged: dict[str, Any] = {}
    threads = max(1, os.cpu_count() or 1)
    for sample in samples:
        result = qt.calibrate({signature_key: [{input_name: sample}]}, num_threads=threads)
        for tensor, qsv in result.items():
            if tensor not in merged or not merged[tensor]:
                merged[tensor] = dict(qsv)
            elif qsv:
                merged[tensor]["min"] = np.minimum(merged[tensor]["min"], qsv["min"])
                merged[tensor]["max"] = np.maximum(merged[tensor]["max"], qsv["max"])
    return merged


def quantize_full_integer(
    float_path: Path, samples: list[np.ndarray], signature_key: str, input_name: str, input_tensor: str, out: Path
) -> None:
    """Static int8 quantization (weights, activations, input and output) calibrated on `samples`."""
    from ai_edge_quantizer import quantizer, recipe

    qt = quantizer.Quantizer(str(float_path), recipe.static_wi8_ai8())
    result = calibrate_min_max(qt, samples, signature_key, input_name)
    # The input is RGB 0..255 by contract: quantize that whole range (scale 1, zero point
    # -128 for int8) instead of the calibration photos' min/max, so no pixel saturates.
    if input_tensor not in result:
        raise ConversionError(f"calibration holds no range for the input tensor {input_tensor!r}")
    qsv = result[input_tensor]
    result[input_tensor] = {
        **qsv,
        "min": np.full_like(qsv["min"], INPUT_RANGE[0]),
        "max": np.full_like(qsv["max"], INPUT_RANGE[1]),
    }
    qt.quantize(result, enable_progress_report=False).export_model(str(out), overwrite=True)


def _quant_dict(detail: dict[str, Any]) -> dict[str, Any]:
    scale, zero_point = detail["quantization"]
    return {
        "dtype": np.dtype(detail["dtype"]).name,
        "scale": float(scale),
        "zero_point": int(zero_point),
        "shape": [int(d) for d in detail["shape"]],
    }


def check_full_integer(model_path: Path) -> tuple[dict[str, Any], dict[str, Any], int]:
    """(input quantization, output quantization, float tensor count); raises unless I/O is int8/uint8."""
    interp = _interpreter(model_path)
    inp, out = interp.get_input_details(), interp.get_output_details()
    if len(inp) != 1 or len(out) != 1:
        raise ConversionError(f"{model_path}: expected one input and one output, found {len(inp)} and {len(out)}")
    for what, d in (("input", inp[0]), ("output", out[0])):
        if np.dtype(d["dtype"]) not in (np.int8, np.uint8):
            raise ConversionError(f"{model_path}: {what} tensor is {np.dtype(d['dtype']).name}, not int8/uint8")
        if d["quantization"][0] <= 0:
            raise ConversionError(f"{model_path}: {what} tensor has no quantization scale")
    floats = sum(1 for t in interp.get_tensor_details() if np.dtype(t["dtype"]) == np.float32)
    return _quant_dict(inp[0]), _quant_dict(out[0]), floats


def run_quantized(interp, batch: np.ndarray) -> np.ndarray:
    """Quantize a float input with the model's own parameters, invoke, dequantize the output."""
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    scale, zero_point = inp["quantization"]
    info = np.iinfo(inp["dtype"])
    q = np.clip(np.round(batch / scale + zero_point), info.min, info.max).astype(inp["dtype"])
    interp.set_tensor(inp["index"], q)
    interp.invoke()
    o_scale, o_zero = out["quantization"]
    return (interp.get_tensor(out["index"]).astype(np.float32) - o_zero) * o_scale


def run_float(interp, batch: np.ndarray) -> np.ndarray:
    interp.set_tensor(interp.get_input_details()[0]["index"], batch)
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"]).copy()


def measure_latency(model_path: Path, height: int, width: int, runs: int = LATENCY_RUNS) -> float:
    """Median milliseconds per invoke of the model (num_threads=2, after three warm-up runs)."""
    interp = _interpreter(model_path, LATENCY_THREADS)
    inp = interp.get_input_details()[0]
    rng = np.random.default_rng(0)
    info = np.iinfo(inp["dtype"])
    x = rng.integers(info.min, info.max, size=(1, height, width, 3), endpoint=True).astype(inp["dtype"])
    interp.set_tensor(inp["index"], x)
    for _ in range(3):
        interp.invoke()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        interp.invoke()
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(statistics.median(times))


def _describe(output_kind: str, pooling: str, gem_p: float, out: np.ndarray) -> np.ndarray:
    if output_kind == "vector":
        return out.reshape(out.shape[0], -1)
    return pool(out, pooling, gem_p)


def _descriptor_label(output_kind: str, pooling: str, gem_p: float) -> str:
    if output_kind == "vector":
        return "the model's output vector (global average inside the model)"
    return f"GeM p={gem_p:g} of the feature map" if pooling == "gem" else "average of the feature map"


def validate(
    torch_module,
    float_path: Path,
    int8_path: Path,
    images: dict[str, np.ndarray],
    output_kind: str,
    pooling: str,
    gem_p: float,
) -> dict[str, Any]:
    """Float (PyTorch) vs int8 agreement on `images` ({name: input batch})."""
    q_interp = _interpreter(int8_path)
    f_interp = _interpreter(float_path)
    desc, raw, tfl = {}, {}, []
    for name, batch in images.items():
        ref = torch_forward(torch_module, batch)
        q = run_quantized(q_interp, batch)
        tfl.append(
            cosine(
                _describe(output_kind, pooling, gem_p, run_float(f_interp, batch)),
                _describe(output_kind, pooling, gem_p, ref),
            )
        )
        desc[name] = round(
            cosine(_describe(output_kind, pooling, gem_p, ref), _describe(output_kind, pooling, gem_p, q)), 5
        )
        raw[name] = round(cosine(ref, q), 5)
    result: dict[str, Any] = {
        "reference": "the PyTorch float model on the same input",
        "descriptor": _descriptor_label(output_kind, pooling, gem_p),
        "descriptor_cosine_mean": round(float(np.mean(list(desc.values()))), 5),
        "descriptor_cosine_min": round(float(np.min(list(desc.values()))), 5),
        "descriptor_cosine_per_image": desc,
    }
    if output_kind == "feature_map":
        result["feature_map_cosine_mean"] = round(float(np.mean(list(raw.values()))), 5)
        result["feature_map_cosine_min"] = round(float(np.min(list(raw.values()))), 5)
    result["float_tflite_vs_torch_cosine_min"] = round(float(np.min(tfl)), 6)
    return result


# ---------------------------------------------------------------- the whole conversion


@dataclass(frozen=True)
class ConvertOptions:
    """Everything one conversion needs; `main` builds it from the command line."""

    weights: Path
    out: Path
    calibration: Path
    arch: str | None = None  # None: detected from the state dict's keys
    heldout: int = 3  # photos of `calibration` kept out of it and used for validation
    validation: Path | None = None  # a separate validation folder (then heldout defaults to 0)
    height: int = 224
    width: int = 224
    output_kind: str = "feature_map"
    pooling: str | None = None  # "gem" (default for feature_map) or "avg" (always for vector)
    gem_p: float = 3.0
    min_cosine: float = DEFAULT_MIN_COSINE

    def resolved_pooling(self) -> str:
        if self.output_kind == "vector":
            if self.pooling not in (None, "avg"):
                raise ValueError("--output-kind vector pools by global average inside the model: use --pooling avg")
            return "avg"
        return self.pooling or "gem"


def _display(path: Path) -> str:
    """A path relative to the repo when it lies inside it (for cards and commands)."""
    path = Path(path).resolve()
    try:
        return path.relative_to(REPO).as_posix()
    except ValueError:
        return str(path)


def reproduce_commands(opts: ConvertOptions, arch: str, weights_sha: str) -> str:
    """The shell commands that rebuild this model from scratch, from the repo root."""
    lines = ["pip install -e '.[convert]'"]
    known = fetch_weights.source_of(weights_sha)
    if known is not None:
        option = "" if known[0] == "mobilenet_v2" else f" --arch {known[0]}"
        lines.append(f"python tools/fetch_weights.py{option} --out {shlex.quote(_display(opts.weights))}")
    else:
        lines.append(f"# weights: {_display(opts.weights)} (sha256 {weights_sha}), supplied by hand")
    cmd = [
        "python",
        "-m",
        "tools.convert",
        "--weights",
        _display(opts.weights),
        "--arch",
        arch,
        "--calibration",
        _display(opts.calibration),
        "--heldout",
        str(opts.heldout),
    ]
    if opts.validation is not None:
        cmd += ["--validation", _display(opts.validation)]
    cmd += [
        "--height",
        str(opts.height),
        "--width",
        str(opts.width),
        "--output-kind",
        opts.output_kind,
        "--pooling",
        opts.resolved_pooling(),
        "--gem-p",
        f"{opts.gem_p:g}",
        "--min-cosine",
        f"{opts.min_cosine:g}",
        "--out",
        _display(opts.out),
    ]
    lines.append(" ".join(shlex.quote(c) for c in cmd))
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    versions = {}
    for dist in ("torch", "litert-torch", "ai-edge-quantizer", "ai-edge-litert", "numpy", "opencv-python-headless"):
        try:
            versions[dist.replace("-", "_")] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist.replace("-", "_")] = "unknown"
    versions["python"] = platform.python_version()
    return versions


def _file_entries(files: list[Path], root: Path) -> list[dict[str, str]]:
    return [{"name": f.relative_to(root).as_posix(), "sha256": sha256_file(f)} for f in files]


def convert(opts: ConvertOptions, log=print) -> ModelCard:
    """Convert, validate and write `opts.out` and its card; returns the card."""
    require_converter()
    pooling = opts.resolved_pooling()
    if opts.output_kind not in OUTPUT_KINDS:
        raise ValueError(f"output kind must be one of {OUTPUT_KINDS}, not {opts.output_kind!r}")
    if opts.height < 32 or opts.width < 32:
        raise ValueError(f"input size {opts.height}x{opts.width} is too small (at least 32x32)")
    if opts.out.suffix != ".tflite":
        raise ValueError(f"--out must name a .tflite file, not {opts.out}")

    state_dict = load_state_dict(opts.weights)
    try:
        detected = detect_architecture(state_dict)
    except ValueError as e:
        raise ModelError(f"{opts.weights}: {e}") from None
    arch = opts.arch or detected
    if arch != detected:
        raise ModelError(f"{opts.weights}: --arch {arch} given, but the weights are {detected}")
    weights_sha = sha256_file(opts.weights)

    photos = list_images(opts.calibration)
    if opts.validation is not None:
        calib_files, held_files = split_heldout(photos, opts.heldout)
        held_files = held_files + list_images(opts.validation)
        val_root_of = {f: (opts.calibration if f in photos else opts.validation) for f in held_files}
    else:
        if opts.heldout < 1:
            raise ValueError("validation needs images: give --heldout N (N >= 1) or --validation DIR")
        calib_files, held_files = split_heldout(photos, opts.heldout)
        val_root_of = {f: opts.calibration for f in held_files}
    samples = calibration_samples([read_rgb(f) for f in calib_files], opts.height, opts.width)
    log(
        f"{arch}: {len(calib_files)} calibration photos → {len(samples)} samples; {len(held_files)} held out for validation"
    )

    module = build_module(arch, state_dict, opts.output_kind)
    known = fetch_weights.source_of(weights_sha)
    with tempfile.TemporaryDirectory(prefix="convert_") as tmp:
        float_path = Path(tmp) / "float.tflite"
        int8_path = Path(tmp) / "int8.tflite"
        export_float(module, opts.height, opts.width, float_path)
        signature_key, input_name, input_tensor = signature_of(float_path)
        quantize_full_integer(float_path, samples, signature_key, input_name, input_tensor, int8_path)
        in_q, out_q, float_tensors = check_full_integer(int8_path)
        val_inputs = {
            val_root_of[f].name + "/" + f.relative_to(val_root_of[f]).as_posix(): to_input(
                read_rgb(f), opts.height, opts.width
            )
            for f in held_files
        }
        validation = validate(module, float_path, int8_path, val_inputs, opts.output_kind, pooling, opts.gem_p)
        size = int8_path.stat().st_size
        latency = measure_latency(int8_path, opts.height, opts.width)
        validation.update(
            {
                "images": list(val_inputs),
                "min_cosine_required": opts.min_cosine,
                "size_bytes": size,
                "float_size_bytes": float_path.stat().st_size,
                "latency_ms_median": round(latency, 3),
                "latency_runs": LATENCY_RUNS,
                "latency_num_threads": LATENCY_THREADS,
                "latency_machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores",
                "float32_tensors_in_int8_model": float_tensors,
                "signature_key": signature_key,
                "input_name": input_name,
            }
        )
        log(
            f"float vs int8 descriptor cosine: mean {validation['descriptor_cosine_mean']:.4f}, "
            f"min {validation['descriptor_cosine_min']:.4f}"
            + (
                f"; feature map cosine: mean {validation['feature_map_cosine_mean']:.4f}, min {validation['feature_map_cosine_min']:.4f}"
                if opts.output_kind == "feature_map"
                else ""
            )
        )
        log(
            f"size {size} bytes; latency {latency:.2f} ms/image (median of {LATENCY_RUNS}, {LATENCY_THREADS} threads); "
            f"input {in_q['dtype']} {in_q['shape']} scale {in_q['scale']:.6g} zp {in_q['zero_point']}; "
            f"output {out_q['dtype']} {out_q['shape']} scale {out_q['scale']:.6g} zp {out_q['zero_point']}"
        )
        if validation["descriptor_cosine_mean"] < opts.min_cosine:
            raise ConversionError(
                f"float-vs-int8 descriptor cosine {validation['descriptor_cosine_mean']:.4f} is below "
                f"--min-cosine {opts.min_cosine}: nothing written"
            )
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(int8_path, opts.out)

    card = ModelCard(
        name=opts.out.stem,
        architecture=arch,
        sha256=sha256_file(opts.out),
        input_height=opts.height,
        input_width=opts.width,
        color_order="RGB",
        output_kind=opts.output_kind,
        output_dim=int(out_q["shape"][-1]),
        output_shape=list(out_q["shape"]),
        pooling=pooling,
        gem_p=float(opts.gem_p),
        normalization="baked",
        input_quantization=in_q,
        output_quantization=out_q,
        source_weights={
            "file": opts.weights.name,
            "sha256": weights_sha,
            "origin": known[1].origin if known is not None else "a torchvision state dict supplied by hand",
        },
        calibration={
            "source": _display(opts.calibration),
            "count": len(samples),
            "photos": len(calib_files),
            "resize": "stretch to the input size (cv2 INTER_AREA when shrinking)",
            "method": "ai_edge_quantizer static_wi8_ai8 (min/max uniform, int8 per-channel weights); "
            "activation ranges are the min/max over all samples; input range fixed to 0..255",
            "augmentation": (
                f"topped up to {MIN_CALIBRATION_SAMPLES} with random crops (35-100% of the area) and "
                f"left-right flips, numpy seed {AUGMENT_SEED}"
                if len(samples) > len(calib_files)
                else "none"
            ),
            "input_range": list(INPUT_RANGE),
            "files": _file_entries(calib_files, opts.calibration),
            "heldout": _file_entries([f for f in held_files if val_root_of[f] == opts.calibration], opts.calibration),
        },
        validation=validation,
        converter=_versions(),
        reproduce=reproduce_commands(opts, arch, weights_sha),
    )
    card.save(ModelCard.path_for(opts.out))
    log(f"wrote {opts.out} and {ModelCard.path_for(opts.out)}")
    return card


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.convert",
        description="Convert MobileNet or EfficientNet-Lite0 weights to a full-integer (int8) LiteRT model and its JSON card.",
    )
    p.add_argument("--weights", type=Path, required=True, help="PyTorch state dict (.pth; tools/fetch_weights.py)")
    p.add_argument("--arch", choices=ARCHITECTURES, help="network (default: detected from the weights' keys)")
    p.add_argument("--calibration", type=Path, required=True, help="folder of real photos (jpg/png, recursive)")
    p.add_argument(
        "--heldout",
        type=int,
        default=None,
        help="photos of --calibration kept out of calibration and used for validation (default 3, or 0 with --validation)",
    )
    p.add_argument("--validation", type=Path, help="a separate folder of validation photos")
    p.add_argument("--size", type=int, default=224, help="square input size (default 224)")
    p.add_argument("--height", type=int, help="input height (default: --size)")
    p.add_argument("--width", type=int, help="input width (default: --size)")
    p.add_argument("--output-kind", choices=OUTPUT_KINDS, default="feature_map", help="default feature_map")
    p.add_argument(
        "--pooling",
        choices=("gem", "avg"),
        help="run-time pooling recorded in the card (default gem; vector output is always avg, inside the model)",
    )
    p.add_argument("--gem-p", type=float, default=3.0, help="GeM exponent (default 3)")
    p.add_argument(
        "--min-cosine",
        type=float,
        default=DEFAULT_MIN_COSINE,
        help=f"fail unless the mean float-vs-int8 descriptor cosine reaches this (default {DEFAULT_MIN_COSINE})",
    )
    p.add_argument("--out", type=Path, required=True, help="the .tflite to write; the card goes beside it as .json")
    return p


def options_from_args(args: argparse.Namespace) -> ConvertOptions:
    heldout = args.heldout if args.heldout is not None else (0 if args.validation is not None else 3)
    return ConvertOptions(
        weights=args.weights,
        out=args.out,
        calibration=args.calibration,
        arch=args.arch,
        heldout=heldout,
        validation=args.validation,
        height=args.height or args.size,
        width=args.width or args.size,
        output_kind=args.output_kind,
        pooling=args.pooling,
        gem_p=args.gem_p,
        min_cosine=args.min_cosine,
    )


def main(argv: list[str] | None = None) -> int:
    """Command line entry. Raises ImportError (naming the [convert] extra) when torch & co. are missing."""
    args = build_parser().parse_args(argv)
    require_converter()
    try:
        convert(options_from_args(args))
    except (ModelError, BadImageError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
