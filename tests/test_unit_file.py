"""units/cortexd.service: `systemd-analyze verify` is clean and the key settings hold."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "units" / "cortexd.service"

# Specifiers as systemd expands them for a system service.
SPECIFIERS = {"%S": "/var/lib", "%t": "/run", "%L": "/var/log", "%C": "/var/cache", "%E": "/etc"}

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


def parse_unit(text: str) -> dict[tuple[str, str], list[str]]:
    """(section, key) -> values in order (keys like Environment= repeat)."""
    out: dict[tuple[str, str], list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        out.setdefault((section, key.strip()), []).append(value.strip())
    return out


def one(unit: dict[tuple[str, str], list[str]], key: str, section: str = "Service") -> str:
    values = unit.get((section, key))
    assert values is not None, f"{key}= missing from [{section}]"
    assert len(values) == 1, f"{key}= given {len(values)} times"
    return values[0]


def expand(command: str) -> list[str]:
    for spec, value in SPECIFIERS.items():
        command = command.replace(spec, value)
    return shlex.split(command.lstrip("-+@!:"))


def verify(path: Path) -> tuple[int, str]:
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""},
    )
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def verifiable_copy(tmp_path: Path, text: str) -> Path:
    # verify requires ExecStart= binaries to exist; point /usr/bin/cortexd at a stand-in.
    stand_in = tmp_path / "bin" / "cortexd"
    stand_in.parent.mkdir()
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    copy = tmp_path / "cortexd.service"
    copy.write_text(text.replace("/usr/bin/cortexd", str(stand_in)))
    return copy


@needs_analyze
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    rc, output = verify(verifiable_copy(tmp_path, UNIT.read_text()))
    assert rc == 0 and output == "", output


@needs_analyze
def test_verify_would_catch_a_mistake(tmp_path: Path) -> None:
    # The check above can fail: a typo and a bad value are reported.
    text = UNIT.read_text().replace("WatchdogSec=30", "WatchdogSec=thirty\nProtectSytem=strict")
    _, output = verify(verifiable_copy(tmp_path, text))
    assert "ProtectSytem" in output and "thirty" in output


def test_key_settings() -> None:
    unit = parse_unit(UNIT.read_text())
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "WatchdogSec": "30",
        "Restart": "on-failure",
        "KillMode": "mixed",
        "TimeoutStopSec": "60",
        "Delegate": "yes",
        "User": "cortexd",
        "Group": "cortexd",
        "StateDirectory": "cortexd",
        "RuntimeDirectory": "cortexd",
        "RuntimeDirectoryMode": "0750",
        "LogsDirectory": "cortexd",
        "ConfigurationDirectory": "cortexd",
        "EnvironmentFile": "-/etc/cortexd/cortexd.env",
        "OOMPolicy": "continue",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "read-only",
        "PrivateTmp": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
    }
    for key, value in expected.items():
        assert one(unit, key) == value, key
    assert one(unit, "WantedBy", "Install") == "multi-user.target"
    assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in unit[("Service", "Environment")]


@pytest.mark.parametrize(
    "key",
    [
        "PrivateDevices",        # hides /dev/nvidia*
        "DevicePolicy",          # closed/strict deny the GPU nodes
        "DeviceAllow",           # any entry switches the allow list on
        "ProtectClock",          # implies DeviceAllow=char-rtc
        "ProtectControlGroups",  # read-only /sys/fs/cgroup defeats Delegate=yes
        "MemoryDenyWriteExecute",  # JITs
        "PrivateUsers",          # device nodes' groups map to nobody
        "ProcSubset",            # hides /proc/driver/nvidia
        "SupplementaryGroups",   # 216/GROUP when "render" does not exist; postinst adds the groups
    ],
)
def test_settings_that_would_break_gpus_are_absent(key: str) -> None:
    assert ("Service", key) not in parse_unit(UNIT.read_text())


def test_exec_lines_match_the_command_line() -> None:
    from cortexd.cli import build_parser
    from cortexd.daemon.settings import DaemonSettings

    STOP_GRACE_S = DaemonSettings().stop_grace_s

    unit = parse_unit(UNIT.read_text())
    start = expand(one(unit, "ExecStart").replace("$CORTEXD_OPTS", ""))
    assert start[:4] == ["/usr/bin/cortexd", "serve", "--config", "/etc/cortexd/cortex.yaml"]
    args = build_parser().parse_args(start[1:])
    assert (args.state_dir, args.runtime_dir, args.log_dir) == ("/var/lib/cortexd", "/run/cortexd", "/var/log/cortexd")
    reload_cmd = expand(one(unit, "ExecReload"))
    assert reload_cmd[:2] == ["/usr/bin/cortexd", "reload"]
    assert build_parser().parse_args(reload_cmd[1:]).runtime_dir == args.runtime_dir
    # The daemon's drain bound plus the replicas' stop grace stay below TimeoutStopSec, so a
    # normal stop never ends in systemd's SIGKILL.
    assert args.drain_timeout_s + STOP_GRACE_S + 5 < float(one(unit, "TimeoutStopSec"))
    # READY=1 must not arrive before the start timeout on a cold start; keep it generous.
    assert float(one(unit, "TimeoutStartSec")) >= 120


def test_nvidia_modprobe_runs_privileged_and_optional() -> None:
    pre = parse_unit(UNIT.read_text())[("Service", "ExecStartPre")]
    assert any(re.match(r"^[-+]{2}/usr/bin/nvidia-modprobe ", p) for p in pre), pre
