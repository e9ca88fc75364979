#!/usr/bin/env bash
# The aarch64 (Raspberry Pi OS 64-bit) side of CI.
#
#   bash .ci/aarch64.sh wheels        every runtime dependency in pyproject.toml resolves to a cp311
#                                     aarch64 wheel (pip download, no build); fails naming the first
#                                     package without one. Skips (exit 0, says so) when PyPI is unreachable.
#   bash .ci/aarch64.sh root DIR      an emulated aarch64 Python 3.11 in DIR: Debian's arm64
#                                     python3.11-minimal, its stdlib and C libraries unpacked with dpkg -x
#                                     (DIR/root) and the runtime wheels for aarch64 (DIR/site); run it with
#                                     qemu-aarch64-static -L DIR/root DIR/root/usr/bin/python3.11.
#                                     Needs root (dpkg --add-architecture, apt-get update) and qemu-user-static.
#
# tests/test_aarch64.py calls `root` (once, cached) and runs the real code under emulation.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

# The runtime requirements, read from pyproject.toml (never a copied list), with the
# environment markers evaluated for Linux aarch64, CPython 3.11.
requirements() {
    python - <<'EOF'
import tomllib
try:
    from packaging.requirements import Requirement
except ImportError:  # a bare interpreter: pip carries its own copy
    from pip._vendor.packaging.requirements import Requirement

env = {"platform_machine": "aarch64", "sys_platform": "linux", "platform_system": "Linux",
       "python_version": "3.11", "python_full_version": "3.11.2", "implementation_name": "cpython",
       "platform_python_implementation": "CPython", "os_name": "posix"}
for line in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    req = Requirement(line)
    if req.marker is None or req.marker.evaluate(env):
        print(f"{req.name}{req.specifier}")
EOF
}

# pip's flags for aarch64 wheels only (manylinux_2_27 or older: what Bookworm's glibc 2.36 runs).
PLATFORM=(--platform manylinux_2_27_aarch64 --platform manylinux2014_aarch64 --platform linux_aarch64
          --implementation cp --python-version 3.11 --only-binary=:all:)

online() {
    python -c "import urllib.request; urllib.request.urlopen('https://pypi.org/simple/pip/', timeout=10)" 2>/dev/null
}

wheels() {
    if ! online; then
        echo "aarch64 wheels: skipped (PyPI unreachable)"
        return 0
    fi
    local dest failed=()
    dest=$(mktemp -d)
    trap 'rm -rf "$dest"' RETURN
    # one package at a time, without its dependencies, so a failure names the package; then all
    # together with dependencies, so what they pull in is checked too
    while read -r req; do
        if ! pip download -q --no-deps "${PLATFORM[@]}" -d "$dest" "$req" >/dev/null 2>"$dest/err"; then
            failed+=("$req")
            tail -n 2 "$dest/err" >&2
        fi
    done < <(requirements)
    if ((${#failed[@]})); then
        echo "aarch64 wheels: no cp311 aarch64 wheel for: ${failed[*]}" >&2
        return 1
    fi
    if ! pip download -q "${PLATFORM[@]}" -d "$dest" $(requirements) >/dev/null 2>"$dest/err"; then
        echo "aarch64 wheels: a dependency of the runtime set has no aarch64 wheel:" >&2
        tail -n 3 "$dest/err" >&2
        return 1
    fi
    echo "aarch64 wheels: ok ($(cd "$dest" && ls *.whl | sed 's/-[0-9].*//' | sort | tr '\n' ' '))"
}

# arm64 Debian packages of an interpreter that runs the code: the minimal interpreter, its
# standard library (sqlite3, ssl, ctypes…) and the C libraries they and the wheels link to.
PACKAGES=(python3.11-minimal libpython3.11-minimal libpython3.11-stdlib
          libc6 libgcc-s1 libstdc++6 zlib1g libexpat1 libssl3 libffi8 libsqlite3-0
          libbz2-1.0 liblzma5 libuuid1 libcrypt1 libtinfo6 libncursesw6 libreadline8 libdb5.3 libnsl2 libtirpc3
          libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libcom-err2 libkeyutils1)

root() {
    local dir=${1:?usage: aarch64.sh root DIR}
    mkdir -p "$dir/debs" "$dir/root" "$dir/site"
    dir=$(cd "$dir" && pwd)
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        dpkg --add-architecture arm64
    fi
    if ! apt-cache show python3.11-minimal:arm64 >/dev/null 2>&1; then
        apt-get update -q >/dev/null
    fi
    # (as root: apt would otherwise warn that its sandbox user cannot write the folder)
    (cd "$dir/debs" && apt-get download -q -o APT::Sandbox::User=root "${PACKAGES[@]/%/:arm64}" >/dev/null)
    for deb in "$dir"/debs/*.deb; do
        dpkg -x "$deb" "$dir/root"
    done
    # (pip compares the host's installed packages with the target's: its warnings are about the host)
    if ! pip install -q --no-compile --upgrade --target "$dir/site" "${PLATFORM[@]}" $(requirements) 2>"$dir/pip.log"; then
        cat "$dir/pip.log" >&2
        return 1
    fi
    echo "aarch64 root: $dir/root, wheels: $dir/site"
}

case "${1:-}" in
    wheels) wheels ;;
    root) root "${2:-}" ;;
    *) echo "usage: $0 wheels | root DIR" >&2; exit 2 ;;
esac
