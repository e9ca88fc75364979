import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_retrieval import BadImageError, Embedder, ModelError
from edge_retrieval.demo import ITEMS, UNKNOWN, photo
from edge_retrieval.preprocess import read_image

_UNIT_TOLERANCE = 1e-4
_SAME_IMAGE_TOLERANCE = 1e-6


def test_card_input_and_quantization_come_from_the_model(embedder):
    card = embedder.card
    assert embedder.sha256 == card.sha256
    assert embedder.input_size == (card.input_width, card.input_height)
    assert np.issubdtype(embedder.input_quant.dtype, np.integer)
    assert np.issubdtype(embedder.output_quant.dtype, np.integer)
    assert embedder.input_quant.scale > 0 and embedder.output_quant.scale > 0
    assert card.input_quantization["scale"] == pytest.approx(embedder.input_quant.scale)


def test_pooling_skips_the_sign_check_only_where_the_quantization_rules_negatives_out(embedder):
    """The model's lowest output code dequantizes to 0 (a ReLU6 output), so `describe` pools
    without looking for negative values: the same descriptor as pooling that looks."""
    from edge_retrieval import descriptors

    q = embedder.output_quant
    assert (np.iinfo(q.dtype).min - q.zero_point) * q.scale >= 0
    output = embedder.invoke(embedder.prepare(read_image(photo(ITEMS[0]))))
    assert output.min() >= 0
    looked = embedder.whitening(descriptors.gem(output, embedder.card.gem_p)[None])[0]
    assert np.allclose(embedder.describe(output), looked, atol=_SAME_IMAGE_TOLERANCE)
    fmap = np.array([[[-1.0, 2.0]], [[3.0, 2.0]]], np.float32)  # a negative value: clamped, as before
    assert np.allclose(descriptors.gem(fmap), descriptors.gem(np.maximum(fmap, descriptors.EPS), 3.0, True))


def test_descriptors_are_unit_float32_and_batch_equals_single(embedder):
    frames = [read_image(photo(n)) for n in ITEMS[:3]]
    batch = embedder.embed(frames)
    assert batch.dtype == np.float32 and batch.shape == (3, embedder.dim)
    assert np.allclose(np.linalg.norm(batch, axis=1), 1, atol=_UNIT_TOLERANCE)
    single = embedder.embed(frames[1])
    assert np.allclose(single[0], batch[1], atol=_SAME_IMAGE_TOLERANCE)
    files = embedder.embed_files([photo(n) for n in ITEMS[:3]])
    assert np.allclose(files, batch, atol=_SAME_IMAGE_TOLERANCE)


def test_different_photos_differ_more_than_a_photo_and_its_copy(embedder):
    v = embedder.embed_files([photo(n) for n in ITEMS + UNKNOWN])
    sims = v @ v.T
    np.fill_diagonal(sims, 0)
    assert sims.max() < 0.95
    img = read_image(photo(ITEMS[0]))
    flipped_light = np.clip(img.astype(int) + 20, 0, 255).astype(np.uint8)
    assert float(embedder.embed(flipped_light)[0] @ v[0]) > 0.95


def test_grey_and_bgra_frames_are_accepted(embedder):
    img = read_image(photo(ITEMS[0]))
    grey = img.mean(axis=2).astype(np.uint8)
    bgra = np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])
    assert embedder.embed(grey).shape == embedder.embed(bgra).shape == (1, embedder.dim)


def test_bad_files_are_named(tmp_path, embedder):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(BadImageError, match="broken.png"):
        embedder.embed_files([photo(ITEMS[0]), broken])
    with pytest.raises(BadImageError, match="missing.jpg: no such file"):
        embedder.embed_files([tmp_path / "missing.jpg"])


def test_model_errors(tmp_path, embedder):
    with pytest.raises(ModelError, match="not found"):
        Embedder(tmp_path / "absent.tflite")
    fake = tmp_path / "fake.tflite"
    fake.write_bytes(b"garbage")
    with pytest.raises(ModelError, match="card not found"):
        Embedder(fake)


def test_idle_is_clear_only_while_the_model_runs(embedder):
    import threading

    tensor = embedder.prepare(np.full((240, 320, 3), 128, np.uint8))
    seen, done = set(), threading.Event()

    def invoke_many():
        for _ in range(30):
            embedder.invoke(tensor)
        done.set()

    worker = threading.Thread(target=invoke_many)
    worker.start()
    while not done.is_set():
        seen.add(embedder.idle.is_set())
    worker.join()
    assert seen == {True, False} and embedder.idle.is_set()
    with pytest.raises(ValueError):  # a failed invoke leaves it set
        embedder.invoke(np.zeros((2, 2, 3), np.int8))
    assert embedder.idle.is_set()


def test_threads_do_not_change_results(embedder):
    img = read_image(photo(ITEMS[0]))
    with Embedder(embedder.model_path, num_threads=1) as one:
        assert np.allclose(one.embed(img), embedder.embed(img), atol=_SAME_IMAGE_TOLERANCE)


def test_fast_resize_matches_inter_area_within_a_grey_level():
    import cv2

    from edge_retrieval.preprocess import resize

    frame = cv2.resize(read_image(photo(ITEMS[0])), (640, 480))
    exact = cv2.resize(frame, (224, 224), interpolation=cv2.INTER_AREA).astype(int)
    assert np.abs(resize(frame, 224, 224).astype(int) - exact).mean() < 1.0


def test_input_lut_matches_the_formula(embedder):
    frame = read_image(photo(ITEMS[1]))
    q = embedder.input_quant
    rgb = embedder.prepare(frame).astype(np.float64)
    w, h = embedder.input_size
    from edge_retrieval.preprocess import resize

    expected = np.rint(resize(frame, w, h)[:, :, ::-1] / q.scale + q.zero_point)
    assert np.array_equal(rgb, expected.clip(-128, 127))


@pytest.mark.parametrize("color_order", ["RGB", "BGR"])
def test_a_frame_of_the_input_size_is_used_as_is_and_left_untouched(color_order):
    from edge_retrieval import preprocess

    frame = read_image(photo(ITEMS[0]))[:48, :64].copy()
    before = frame.copy()
    shift = (np.arange(256) - 128).astype(np.int8)
    x = preprocess.to_input(frame, 64, 48, color_order, shift)
    assert np.array_equal(frame, before)
    expected = frame[..., ::-1] if color_order == "RGB" else frame
    assert x.dtype == np.int8 and np.array_equal(x, expected.astype(np.int16) - 128)


def test_only_the_xnnpack_notice_is_kept_off_stderr(capfd):
    from edge_retrieval.embedder import XNNPACK_NOTICE, _without_xnnpack_notice

    with _without_xnnpack_notice():
        os.write(2, XNNPACK_NOTICE + b"\nERROR: a real one\n")
    assert capfd.readouterr().err == "ERROR: a real one\n"


def test_a_cli_user_sees_no_xnnpack_notice(tmp_path):
    """LiteRT prints it from C++ on file descriptor 2, out of Python's reach: checked in a real process."""
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(repo)}
    cli = [sys.executable, "-c", "from edge_retrieval.cli import cli; cli()"]
    for args in (["info"], ["enroll", photo(ITEMS[0]), "-g", tmp_path / "g.db"]):
        out = subprocess.run(
            cli + [str(a) for a in args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        assert "XNNPACK" not in out.stderr, args
