"""The built wheel works on its own: built from the source, installed in a fresh venv (dependencies
from the package registry), run in an empty folder with no checkout on the path.

This is CI's wheel check. The first run downloads the dependencies into pip's cache; reruns
take about a minute on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# a checkout's build/ may hold modules deleted since: the wheel is built from a clean copy of the source
NOT_SOURCE = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "weights", "__pycache__", ".pytest_cache", ".ruff_cache", "test-artifacts"
)


def _run(args, cwd, env, timeout=600):
    out = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{args}: exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv bin folder, environment for the installed commands, an empty working folder)."""
    tmp = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("EDGE_RETRIEVAL_")}
    shutil.copytree(REPO, tmp / "src", ignore=NOT_SOURCE)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", ".", "-w", tmp / "dist"], tmp / "src", env)
    (wheel,) = (tmp / "dist").glob("edge_retrieval-*.whl")
    _run([sys.executable, "-m", "venv", tmp / "venv"], tmp, env)  # no system site packages
    bin_dir = tmp / "venv" / "bin"
    _run([bin_dir / "python", "-m", "pip", "install", "-q", wheel], tmp, env, timeout=1800)
    work = tmp / "work"
    work.mkdir()
    # the demo clip is rendered into the cache: a temporary one, not the user's
    return bin_dir, {**env, "XDG_CACHE_HOME": str(tmp / "cache")}, work


@pytest.mark.slow
def test_the_installed_wheel_runs_outside_the_checkout(installed):
    bin_dir, env, work = installed
    cli = bin_dir / "edge-retrieval"
    site = _run([bin_dir / "python", "-c", "import edge_retrieval; print(edge_retrieval.__file__)"], work, env)
    package = Path(site.stdout.strip()).parent
    assert package.is_relative_to(bin_dir.parent), package  # the venv's copy, not the checkout

    out = _run([cli, "info", "--json"], work, env)
    assert "XNNPACK" not in out.stderr  # LiteRT's notice stays hidden in the installed package too
    info = json.loads(out.stdout)
    assert info["model"]["name"] == "mobilenet_v2_240x320_int8"
    assert Path(info["model"]["path"]).is_relative_to(package / "data" / "models")

    for name in ("cat", "astronaut"):
        shutil.copy(package / "data" / "photos" / f"{name}.jpg", work / f"{name}.jpg")
    out = _run([cli, "enroll", "cat.jpg", "astronaut.jpg"], work, env).stdout
    assert "enrolled 2 image(s) as 2 item(s)" in out
    out = _run([cli, "search", "astronaut.jpg", "--json"], work, env).stdout
    assert json.loads(out.splitlines()[0])["match"] == "astronaut"

    run = _run([cli, "run"], work, env)  # the built-in demo: about 10 s
    assert "INFO alert: cat" in run.stderr and "alert(s)" in run.stdout + run.stderr
