"""The real code on emulated aarch64 (a Raspberry Pi OS 64-bit userland): enrol and search real
photos with the shipped int8 model, and compare with x86.

`.ci/aarch64.sh root` unpacks Debian's arm64 python3.11 and the aarch64 wheels (once, cached in the
temporary folder); qemu-aarch64-static runs it. LiteRT's optimized kernels crash with SIGSEGV
under the emulator, so both sides use the reference kernels (EDGE_RETRIEVAL_OP_RESOLVER=ref):
the same arithmetic on both architectures, so the descriptors agree to float rounding; against
x86's default (XNNPACK) kernels they agree within the int8 tolerance. ≈ 2 s a model run emulated.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / ".ci" / "aarch64.sh"
QEMU = shutil.which("qemu-aarch64-static")
ENROLLED = ("cat", "coffee", "rocket")
QUERIES = ("cat", "rocket", "brick")  # two enrolled items and a texture never enrolled
SAME_ARITHMETIC = 0.9999  # reference kernels on both sides: float rounding only
INT8_TOLERANCE = 0.98  # reference vs optimized kernels (measured 0.991): the card's float-vs-int8 bar

pytestmark = [pytest.mark.aarch64, pytest.mark.slow]

# Run by both interpreters: enrol, then search camera-like views with the whole-frame preset
# (one model run a frame); prints the descriptors and the answers as JSON.
PROGRAM = r"""
import json, platform, sys, tempfile
from pathlib import Path
import numpy as np
from edge_retrieval import Embedder, Gallery
from edge_retrieval.demo import camera_view, photo
from edge_retrieval.doctor import Report, check_card
from edge_retrieval.enroll import enroll
from edge_retrieval.preprocess import read_image
from edge_retrieval.recognize import open_recognizer

enrolled, queries = sys.argv[1].split(","), sys.argv[2].split(",")
with tempfile.TemporaryDirectory() as tmp, Embedder() as emb, Gallery(Path(tmp) / "g.db") as gallery:
    enroll(gallery, emb, [(name, photo(name)) for name in enrolled])
    recognizer = open_recognizer(emb, gallery, "whole")
    views = [camera_view(read_image(photo(name)), np.random.default_rng(i)) for i, name in enumerate(queries)]
    rankings = [recognizer.recognize(view) for view in views]
    report = Report()
    check_card(report, emb)  # doctor's model check: the card's images against its recorded descriptors
    print(json.dumps({
        "card": [report.checks[0].status, report.checks[0].detail],
        "machine": platform.machine(),
        "descriptors": emb.embed(views).tolist(),
        "answers": [r.label for r in rankings],
        "best": [r.best.label if r.best else None for r in rankings],
    }))
"""


def run(argv: list[str], env: dict, timeout: float) -> dict:
    args = ["-c", PROGRAM, ",".join(ENROLLED), ",".join(QUERIES)]
    done = subprocess.run(argv + args, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{argv[0]} exited {done.returncode}: {done.stderr[-2000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def online() -> bool:
    try:
        urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=10)
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def aarch64_root() -> Path:
    """The emulated interpreter's folder, prepared once per set of runtime dependencies."""
    if QEMU is None:
        pytest.skip("qemu-aarch64-static absent (apt-get install qemu-user-static; .ci/apt-packages.txt)")
    if not (shutil.which("apt-get") and shutil.which("dpkg")):
        pytest.skip("apt-get and dpkg absent: the arm64 interpreter comes from Debian's packages")
    key = hashlib.sha256(SCRIPT.read_bytes() + (REPO / "pyproject.toml").read_bytes()).hexdigest()[:12]
    folder = Path(tempfile.gettempdir()) / f"edge-retrieval-aarch64-{key}"
    if not (folder / "ready").is_file():
        if (
            os.geteuid() != 0
            and "arm64"
            not in subprocess.run(
                ["dpkg", "--print-foreign-architectures"], capture_output=True, text=True
            ).stdout.split()
        ):
            pytest.skip("not root: dpkg --add-architecture arm64 and apt-get update need root")
        if not online():
            pytest.skip("offline: the arm64 packages and aarch64 wheels are downloaded (deb.debian.org, PyPI)")
        done = subprocess.run(["bash", str(SCRIPT), "root", str(folder)], capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f".ci/aarch64.sh root failed: {done.stderr[-2000:]}"
        (folder / "ready").write_text("")
    return folder


def test_enrol_and_search_on_emulated_aarch64_agree_with_x86(aarch64_root):
    root = aarch64_root / "root"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": f"{aarch64_root / 'site'}{os.pathsep}{REPO}",
        "PYTHONDONTWRITEBYTECODE": "1",  # the emulated run writes nothing into the checkout
        "EDGE_RETRIEVAL_OP_RESOLVER": "ref",  # the optimized kernels SIGSEGV under qemu
        "HOME": str(aarch64_root),
    }
    arm = run([QEMU, "-L", str(root), str(root / "usr" / "bin" / "python3.11")], env, timeout=600)
    assert arm["machine"] == "aarch64"

    x86_env = dict(os.environ, PYTHONPATH=str(REPO), EDGE_RETRIEVAL_OP_RESOLVER="ref")
    x86_ref = run([sys.executable], x86_env, timeout=300)
    x86_env.pop("EDGE_RETRIEVAL_OP_RESOLVER")
    x86 = run([sys.executable], x86_env, timeout=300)

    a, r, x = (np.array(d["descriptors"], np.float32) for d in (arm, x86_ref, x86))
    same = (a * r).sum(axis=1)
    tolerance = (a * x).sum(axis=1)
    assert same.min() >= SAME_ARITHMETIC, f"aarch64 vs x86, both reference kernels: cosines {same}"
    assert tolerance.min() >= INT8_TOLERANCE, f"aarch64 reference vs x86 optimized kernels: cosines {tolerance}"
    assert arm["answers"] == x86_ref["answers"] == x86["answers"]
    assert arm["best"] == x86["best"]
    assert arm["answers"] == ["cat", "rocket", None], arm["answers"]  # the texture is unknown
    assert arm["card"][0] == "ok", arm["card"][1]  # doctor's model check passes on aarch64
