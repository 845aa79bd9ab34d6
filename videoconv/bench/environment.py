"""What a benchmark result must carry to be read later: machine, versions, revision, command."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from typing import Dict, Optional

import torch

from ..backends.cpu import onednn_bf16_supported as onednn_bf16

__all__ = ["environment", "cpu_name", "git_revision", "device_name", "onednn_bf16"]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def git_revision() -> Optional[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _command() -> str:
    program = os.path.basename(sys.argv[0])
    if program == "__main__.py":  # python -m videoconv
        program = "python -m videoconv"
    return " ".join([program] + sys.argv[1:])


def _version(module: str) -> Optional[str]:
    try:
        mod = __import__(module)
    except Exception:  # a broken optional install must not break the report
        return None
    return getattr(mod, "__version__", "unknown")


def environment(device: torch.device) -> Dict[str, object]:
    import videoconv

    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(device),
        "device_type": device.type,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "numpy": _version("numpy"),
        "videoconv": videoconv.__version__,
        "git_revision": git_revision(),
        "command": _command(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        # Whether oneDNN has bfloat16 convolutions on this CPU (AVX512-BW/VL/DQ or
        # AVX-NE-CONVERT); without them eager bfloat16 runs ATen's reference loops.
        "onednn_bf16": onednn_bf16(),
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    return env
