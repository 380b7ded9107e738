"""Where cortexd keeps its files: systemd's directories, root's defaults, or per-user ones."""

from __future__ import annotations

import os

SYSTEM_CONFIG = "/etc/cortexd/cortex.yaml"


def _is_root() -> bool:
    return os.geteuid() == 0


def default_state_dir() -> str:
    # systemd sets these from StateDirectory= etc.; they win over our own defaults.
    if os.environ.get("STATE_DIRECTORY"):
        return os.environ["STATE_DIRECTORY"].split(":")[0]
    if _is_root():
        return "/var/lib/cortexd"
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "cortexd")


def default_runtime_dir() -> str:
    if os.environ.get("CORTEXD_RUNTIME_DIR"):
        return os.environ["CORTEXD_RUNTIME_DIR"]
    if os.environ.get("RUNTIME_DIRECTORY"):
        return os.environ["RUNTIME_DIRECTORY"].split(":")[0]
    if _is_root():
        return "/run/cortexd"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return os.path.join(xdg, "cortexd")
    return f"/tmp/cortexd-{os.getuid()}"


def default_log_dir() -> str:
    if os.environ.get("LOGS_DIRECTORY"):
        return os.environ["LOGS_DIRECTORY"].split(":")[0]
    if _is_root():
        return "/var/log/cortexd"
    return os.path.join(default_state_dir(), "log")


def default_config() -> str:
    if _is_root() or os.path.exists(SYSTEM_CONFIG):
        return SYSTEM_CONFIG
    return "cortex.yaml"


def control_socket(runtime_dir: str) -> str:
    return os.path.join(runtime_dir, "control.sock")
