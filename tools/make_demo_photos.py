"""Rebuild edge_retrieval/data/photos/ from the scikit-image wheel's sample photos.

The photos are public-domain / CC0 pictures that ship inside the `scikit-image` wheel
(see edge_retrieval/data/photos/SOURCE.md). The wheel is fetched with
`pip download --no-deps` and read as a zip; scikit-image is never installed.

    python tools/make_demo_photos.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import cv2
import numpy as np

WHEEL = "scikit-image==0.26.0"
# name in the wheel -> name in the repo (all CC0 / public domain, see SOURCE.md)
PHOTOS = {
    "astronaut.png": "astronaut.jpg",
    "chelsea.png": "cat.jpg",
    "coffee.png": "coffee.jpg",
    "rocket.jpg": "rocket.jpg",
    "hubble_deep_field.jpg": "galaxies.jpg",
    "retina.jpg": "retina.jpg",
    "ihc.png": "tissue.jpg",
    "camera.png": "cameraman.jpg",
    "coins.png": "coins.jpg",
    "brick.png": "brick.jpg",
    "grass.png": "grass.jpg",
    "gravel.png": "gravel.jpg",
}
LONG_SIDE = 400
OUT = Path(__file__).resolve().parent.parent / "edge_retrieval" / "data" / "photos"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, WHEEL], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            for src, dst in PHOTOS.items():
                buf = np.frombuffer(zf.read(f"skimage/data/{src}"), np.uint8)
                img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
                h, w = img.shape[:2]
                s = LONG_SIDE / max(h, w)
                if s < 1:
                    img = cv2.resize(img, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
                cv2.imwrite(str(OUT / dst), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
                print(OUT / dst, img.shape)


if __name__ == "__main__":
    main()
