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

__all__ = ["environment", "cpu_name", "cpu_microarchitecture", "machine_label", "git_revision",
           "device_name", "onednn_bf16"]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: x86 (vendor, family) -> [(first model, last model, name)], from the vendors' family/model
#: numbers: a cloud VM's "model name" is often only "AMD EPYC" whatever the generation, and the
#: generation decides which kernels run (AVX-512 width, AVX512-BF16, AMX).
_MICROARCHITECTURES = {
    ("AuthenticAMD", 0x17): [(0x00, 0x2F, "Zen"), (0x30, 0xFF, "Zen 2")],
    ("AuthenticAMD", 0x19): [(0x00, 0x0F, "Zen 3"), (0x10, 0x1F, "Zen 4"), (0x20, 0x5F, "Zen 3"),
                             (0x60, 0xAF, "Zen 4")],
    ("AuthenticAMD", 0x1A): [(0x00, 0x4F, "Zen 5")],
    ("GenuineIntel", 6): [(0x55, 0x55, "Skylake-SP/Cascade Lake"), (0x6A, 0x6C, "Ice Lake-SP"),
                          (0x8F, 0x8F, "Sapphire Rapids"), (0xCF, 0xCF, "Emerald Rapids"),
                          (0xAD, 0xAE, "Granite Rapids")],
}

#: The CPU features that decide the cpu backend's kernels, in the order reports list them.
_FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "avx512_fp16", "avx_ne_convert",
             "amx_bf16")


def _cpuinfo() -> Dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    fields: Dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def machine_label(cpu: Optional[Dict[str, object]]) -> Optional[str]:
    """A short label for a result's machine from its environment's ``cpu`` entry
    (:func:`cpu_microarchitecture`), e.g. "Zen 5, AVX512-BF16": the generation and the widest of
    the features the cpu backend's kernels use. None without one (results recorded before it)."""
    if not cpu or not cpu.get("name"):
        return None
    features = cpu.get("features") or []
    isa = next((label for flag, label in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16"),
                                          ("avx512f", "AVX-512"), ("avx2", "AVX2"))
                if flag in features), "no AVX2")
    return f"{cpu['name']}, {isa}"


def cpu_microarchitecture() -> Dict[str, object]:
    """``{"name", "vendor", "family", "model", "features"}`` of this CPU: ``name`` is the
    microarchitecture where the (vendor, family, model) is known ("Zen 5"), else
    "family F model M", or None off x86 Linux; ``features`` the flags of ``_FEATURES`` it has."""
    info = _cpuinfo()
    vendor = info.get("vendor_id")
    try:
        family, model = int(info["cpu family"]), int(info["model"])
    except (KeyError, ValueError):
        return {"name": None, "vendor": vendor, "family": None, "model": None, "features": []}
    name = f"family {family} model {model}"
    for first, last, arch in _MICROARCHITECTURES.get((vendor, family), []):
        if first <= model <= last:
            name = arch
            break
    flags = set(info.get("flags", "").split())
    return {"name": name, "vendor": vendor, "family": family, "model": model,
            "features": [f for f in _FEATURES if f in flags]}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    arch = cpu_microarchitecture()["name"]
    arch = f"{arch}, " if arch else ""
    return f"{cpu_name()} ({arch}{os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


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
    if device.type == "cpu":
        # The generation and features, which the model name of a VM often does not give.
        env["cpu"] = cpu_microarchitecture()
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    return env
