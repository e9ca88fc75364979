"""sd_notify over our own datagram socket, and the unit file."""

import configparser
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from edge_retrieval.service.systemd import Notifier, socket_address, watchdog_seconds

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "edge-retrieval.service"
TEMPLATE = UNIT.with_name("edge-retrieval@.service")  # one service per camera


def test_messages_reach_a_path_socket(notify_socket):
    notifier = Notifier.from_env({"NOTIFY_SOCKET": notify_socket.path})
    assert notifier.enabled
    assert notifier.ready("loaded") and notifier.watchdog() and notifier.status("4.9 fps\nx") and notifier.stopping()
    assert notify_socket.wait_for("STOPPING=1")
    assert notify_socket.messages == ["READY=1\nSTATUS=loaded", "WATCHDOG=1", "STATUS=4.9 fps x", "STOPPING=1"]
    notifier.close()


def test_abstract_socket_names():
    assert socket_address("@edge/notify") == b"\0edge/notify"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    name = f"@edge-retrieval-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(socket_address(name))
    server.settimeout(2)
    try:
        with Notifier(name) as notifier:
            assert notifier.watchdog()
        assert server.recv(100) == b"WATCHDOG=1"
    finally:
        server.close()


def test_without_notify_socket_nothing_happens(tmp_path):
    notifier = Notifier.from_env({})
    assert not notifier.enabled and not notifier.ready() and notifier.sent == 0
    gone = Notifier(str(tmp_path / "nobody-listens"))  # systemd went away: never an exception
    assert gone.enabled and not gone.watchdog()


def test_watchdog_seconds():
    assert watchdog_seconds({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_seconds({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None  # for another process
    assert watchdog_seconds({}) is None


def unit(path=UNIT):
    parser = configparser.ConfigParser(strict=False, interpolation=None, empty_lines_in_values=False)
    parser.optionxform = str
    parser.read_string(path.read_text())
    return parser


def test_unit_file_declares_notify_watchdog_restart_and_hardening():
    u = unit()
    service = u["Service"]
    assert service["Type"] == "notify"
    assert int(service["WatchdogSec"]) > 0
    assert service["Restart"] == "on-failure"
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert "video" in service["SupplementaryGroups"].split()
    assert "/var/lib/edge-retrieval" in service["ReadWritePaths"].split()
    assert service.get("DynamicUser") == "yes" or service.get("User")
    assert " run --config " in service["ExecStart"]
    config = service["ExecStart"].split("--config ")[1].split()[0]
    assert Path(config).name == "edge-retrieval.toml"
    assert int(service["TimeoutStopSec"]) >= 2
    assert u["Install"]["WantedBy"] == "multi-user.target"


def test_the_template_unit_runs_one_config_per_camera_as_the_single_unit_runs_its_one():
    """edge-retrieval@<camera>: /etc/edge-retrieval/<camera>.toml, everything else as edge-retrieval.service
    but the devices of a Pi camera; installed from the wheel."""
    single, template = unit()["Service"], unit(TEMPLATE)["Service"]
    assert template["ExecStart"] == "/usr/local/bin/edge-retrieval run --config /etc/edge-retrieval/%i.toml"
    differ = {key for key in set(single) | set(template) if single.get(key) != template.get(key)}
    assert differ == {"ExecStart", "DeviceAllow"}  # (the parser keeps the last DeviceAllow)
    lines = TEMPLATE.read_text().splitlines()
    assert "DeviceAllow=char-video4linux rw" in lines and "DeviceAllow=char-media rw" in lines
    header = "\n".join(line for line in lines if line.startswith("#"))
    assert "pip install edge_retrieval-" in header and ".whl" in header and "pip install -e" not in header
    assert "systemctl enable --now edge-retrieval@" in header


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze absent (apt-get install systemd; listed in .ci/apt-packages.txt)",
)
@pytest.mark.parametrize(
    "source, name",
    [
        (UNIT, "edge-retrieval.service"),
        (TEMPLATE, "edge-retrieval@.service"),
        (TEMPLATE, "edge-retrieval@front.service"),
    ],
)
def test_systemd_analyze_verify(tmp_path, source, name):
    exe = shutil.which("edge-retrieval") or sys.executable
    text = source.read_text().replace("/usr/local/bin/edge-retrieval", exe)  # verify checks the binary exists
    path = tmp_path / name
    path.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert name.split("@")[0] not in result.stderr, result.stderr
