"""The motion gate and the ROI on real photos."""

import cv2
import numpy as np
import pytest

from edge_retrieval.config import MotionConfig, RoiConfig
from edge_retrieval.demo import photo
from edge_retrieval.motion import MotionGate, crop_roi


@pytest.fixture(scope="module")
def scene():
    return cv2.resize(cv2.imread(str(photo("brick"))), (640, 480))


def noisy(image, seed, sigma=3.0):
    rng = np.random.default_rng(seed)
    return np.clip(image + rng.normal(0, sigma, image.shape), 0, 255).astype(np.uint8)


def test_crop_roi_uses_fractions_of_the_frame():
    image = np.arange(100 * 200).reshape(100, 200)
    assert crop_roi(image, None) is image
    part = crop_roi(image, RoiConfig(x=0.5, y=0.25, width=0.25, height=0.5))
    assert part.shape == (50, 50) and part[0, 0] == image[25, 100]


def test_static_scene_with_sensor_noise_is_skipped(scene):
    gate = MotionGate.from_config(MotionConfig())
    assert gate.check(noisy(scene, 0), 0.0).reason == "first"
    results = [gate.check(noisy(scene, i), i * 0.1) for i in range(1, 20)]
    assert not any(r.changed for r in results)
    assert max(r.fraction for r in results) < 0.02


def test_an_object_entering_is_motion_with_its_box(scene):
    gate = MotionGate()
    gate.check(scene, 0.0)
    frame = scene.copy()
    frame[240:480, 320:640] = cv2.resize(cv2.imread(str(photo("cat"))), (320, 240))
    m = gate.check(frame, 0.1)
    assert m.changed and m.reason == "motion" and m.fraction > 0.15
    x, y, w, h = m.box
    assert x == pytest.approx(0.5, abs=0.05) and y == pytest.approx(0.5, abs=0.05)
    assert x + w == pytest.approx(1.0, abs=0.02) and y + h == pytest.approx(1.0, abs=0.02)
    assert not gate.check(frame, 0.2).changed  # the changed frame became the reference


def test_slow_drift_adds_up_against_the_last_embedded_frame(scene):
    gate = MotionGate(pixel_threshold=12, min_changed=0.5, refresh=0)
    gate.check(scene, 0.0)
    reasons = [gate.check(np.clip(scene.astype(int) + 3 * i, 0, 255).astype(np.uint8), i).reason for i in range(1, 8)]
    assert reasons[:3] == ["still"] * 3 and "motion" in reasons  # 3 levels a frame: > 12 after 5 frames


def test_refresh_and_disabled(scene):
    gate = MotionGate(refresh=1.0)
    gate.check(scene, 0.0)
    assert gate.check(scene, 0.5).reason == "still"
    assert gate.check(scene, 1.0).reason == "refresh"
    off = MotionGate(enabled=False)
    assert all(off.check(scene, t).changed for t in range(3))
