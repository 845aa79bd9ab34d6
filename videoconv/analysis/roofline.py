"""Roofline model of the fused layers: what a device can do, what a layer must do, what fusion wins.

The model
---------
A layer needs at least ``F`` floating-point operations and must move at least ``B`` bytes
between DRAM/HBM and the chip. On a device with peak compute ``P`` (FLOP/s, per dtype) and
memory bandwidth ``W`` (bytes/s), no implementation can run it faster than

.. math::  t_{\\min} = \\max(F / P,\\; B / W)

(the *roofline bound*). ``F / B`` is the layer's arithmetic intensity; the attainable rate at
intensity ``I`` is ``min(P, I * W)``.

* ``F`` is ``2 * useful MACs`` of the convolution(s): the multiply-accumulates whose input tap
  lies inside the input. Taps that land on the zero padding are not work (oneDNN and cuDNN
  skip them), and on the late, small layers of video models they are a large share of the
  conventional count (:mod:`videoconv.analysis.flops`, torchvision's convention, kept as
  :attr:`LayerCost.macs`): a 3x3x3 conv on 2x7x7 has 45% of its taps on padding, and counting
  them put measured kernels above the peak. BatchNorm, residual add and activation are a few
  element-wise FLOPs per output, negligible next to any convolution and not on the tensor
  cores, so they are not counted.
* ``B`` is the *compulsory* traffic of each variant, counted as if every on-chip cache were
  perfect: each tensor a pass touches is read once and each tensor it produces is written once
  (halo re-reads, write-allocate traffic and spills are the implementation's losses, which is
  what "% of roofline" shows). All tensors, parameters included, are in the layer's dtype
  (``tf32`` is stored as float32).

The variants (:func:`layer_cost` lists every pass with its bytes):

* ``conv3d_bn_act`` **fused**: read the input, the weight, ``scale``/``shift`` and the residual
  (if any), write the output once.
* ``conv3d_bn_act`` **unfused** (the eager module chain, one kernel per module):
  ``conv`` reads x and w, writes z; ``bn`` reads z and 4 per-channel vectors (running mean/var,
  gamma, beta), writes y; ``add`` (residual) reads y and the residual, writes s; ``act`` reads s,
  writes the output (``identity`` has no pass). In-place modules still read and write.
* ``conv2plus1d_bn_act`` **fused** (the whole unit in one kernel): read x, both weights, both
  scale/shift pairs and the residual, write the output; the intermediate ``h`` never reaches
  memory.
* ``conv2plus1d_bn_act`` **unfused**: ``conv1``, ``bn1``, ``act1`` on the intermediate (written
  by each pass and read by the next), then ``conv2``, ``bn2``, [``add``], ``act2`` as above.
  :attr:`LayerCost.bytes_fused_per_conv` is the middle ground (two ``conv3d_bn_act`` kernels:
  the intermediate is written once and read once).

Backward and training step (the bench's ``--mode bwd|train``): the backward of a layer computes
the input gradient and the weight gradient, each a convolution of the forward's size, so it
needs twice the forward's FLOPs; and it must read every tensor the forward touched (or its
gradient) once and write the gradient of each once, i.e. twice the forward's compulsory bytes.
A training step is forward plus backward. :data:`MODE_FACTOR` holds these multipliers (the
optimizer's per-parameter traffic is not counted); both FLOPs and bytes scale by the same
factor, so the bound does too.

:func:`roofline_time` turns a cost into lower-bound times on a :class:`DeviceSpec`;
``fusion_headroom = bound(unfused) / bound(fused)`` is the most that fusion can win on an ideal
machine (1.0 when both are compute-bound). :func:`achieved` turns a measured time into TFLOP/s,
GB/s and % of the bound; :func:`fusion_summary` puts headroom and the measured win side by side.

Devices
-------
:data:`DATASHEET_SPECS` holds dense (no structured sparsity) tensor-core peaks and HBM bandwidth
of H100 SXM, H200 and A100 SXM 80GB from NVIDIA's datasheets. The CPU has no datasheet here: its
peak is *measured* by :func:`measure_cpu_spec` (per dtype the faster of a timed square GEMM and
a timed oneDNN 3x3x3 convolution, and a timed large copy, best of a few runs) once per process and, by default, once per machine (a JSON file under
``~/.cache/videoconv/``, see :func:`cache_dir`). :func:`device_spec` picks the right one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .shapes import conv_output_shape

__all__ = [
    "DeviceSpec",
    "DATASHEET_SPECS",
    "MODE_FACTOR",
    "device_spec",
    "cpu_spec",
    "measure_cpu_spec",
    "cache_dir",
    "math_dtype",
    "element_size",
    "Pass",
    "LayerCost",
    "layer_cost",
    "RooflineTime",
    "roofline_time",
    "attainable",
    "Achieved",
    "achieved",
    "fusion_summary",
]

DtypeLike = Union[str, torch.dtype]

_DTYPE_NAMES = {
    torch.float32: "float32",
    torch.bfloat16: "bfloat16",
    torch.float16: "float16",
    torch.float64: "float64",
}
_ALIASES = {"fp32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16",
            "half": "float16", "fp64": "float64", "double": "float64"}
#: FLOPs and compulsory bytes of each benchmark mode, in units of the forward's (see above).
MODE_FACTOR = {"fwd": 1, "bwd": 2, "train": 3}

_ELEMENT_SIZE = {"float32": 4, "tf32": 4, "bfloat16": 2, "float16": 2, "float64": 8}


def _dtype_name(dtype: DtypeLike) -> str:
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPE_NAMES:
            raise ValueError(f"unsupported dtype {dtype}")
        return _DTYPE_NAMES[dtype]
    name = str(dtype).replace("torch.", "").lower()
    name = _ALIASES.get(name, name)
    if name not in _ELEMENT_SIZE:
        raise ValueError(f"unsupported dtype {dtype!r}; choose from {', '.join(_ELEMENT_SIZE)}")
    return name


def element_size(dtype: DtypeLike) -> int:
    """Bytes per element in memory (``tf32`` is a math mode: stored as float32, 4 bytes)."""
    return _ELEMENT_SIZE[_dtype_name(dtype)]


def math_dtype(dtype: DtypeLike, device: Union[str, torch.device, None] = None) -> str:
    """The peak to compare a convolution with: ``"tf32"`` for float32 on CUDA when torch lets
    cuDNN use TF32 (``torch.backends.cudnn.allow_tf32``, True by default), else ``dtype``."""
    name = _dtype_name(dtype)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if name == "float32" and dev.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return name


# ---------------------------------------------------------------------------------------------
# devices


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
    """Peak compute and memory bandwidth of one device.

    ``peak_tflops`` maps a math dtype (``"float32"``: non-tensor-core FP32 on GPUs, ``"tf32"``,
    ``"bfloat16"``, ``"float16"``, all with float32 accumulation) to dense TFLOP/s;
    ``bandwidth_gbs`` is DRAM/HBM bandwidth in GB/s (1e9 bytes/s); ``source`` says where the
    numbers come from (``"datasheet: ..."`` or ``"measured: ..."``).
    """

    name: str
    peak_tflops: Mapping[str, float]
    bandwidth_gbs: float
    source: str

    def peak(self, dtype: DtypeLike) -> float:
        """Peak TFLOP/s for ``dtype`` (raises ``KeyError`` naming the known dtypes)."""
        name = _dtype_name(dtype)
        if name not in self.peak_tflops:
            raise KeyError(f"{self.name}: no peak for {name!r} (known: {', '.join(self.peak_tflops)})")
        return float(self.peak_tflops[name])

    def ridge_point(self, dtype: DtypeLike) -> float:
        """Arithmetic intensity (FLOP/byte) above which a kernel is compute-bound."""
        return self.peak(dtype) * 1e12 / (self.bandwidth_gbs * 1e9)

    def to_dict(self) -> Dict[str, object]:
        return dict(name=self.name, peak_tflops=dict(self.peak_tflops),
                    bandwidth_gbs=self.bandwidth_gbs, source=self.source)

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> "DeviceSpec":
        return cls(name=str(d["name"]), peak_tflops={str(k): float(v) for k, v in dict(d["peak_tflops"]).items()},
                   bandwidth_gbs=float(d["bandwidth_gbs"]), source=str(d["source"]))


_HOPPER_SOURCE = ("NVIDIA {} datasheet (dense, i.e. half the 'with sparsity' figures: "
                  "BF16/FP16 1,979 -> 989.4 TFLOPS, TF32 989 -> 494.7, FP32 67; H100 architecture "
                  "whitepaper table 3 gives 989.4 / 494.7 / 66.9), memory bandwidth {}")

#: Datasheet specs (dense tensor-core peaks, no sparsity), by name.
DATASHEET_SPECS: Dict[str, DeviceSpec] = {
    "H100 SXM": DeviceSpec(
        name="H100 SXM",
        peak_tflops={"float32": 66.9, "tf32": 494.7, "bfloat16": 989.4, "float16": 989.4},
        bandwidth_gbs=3350.0,
        source="datasheet: " + _HOPPER_SOURCE.format("H100 SXM5 80GB", "3.35 TB/s HBM3"),
    ),
    "H200": DeviceSpec(
        name="H200",
        peak_tflops={"float32": 66.9, "tf32": 494.7, "bfloat16": 989.4, "float16": 989.4},
        bandwidth_gbs=4800.0,
        source="datasheet: " + _HOPPER_SOURCE.format("H200 SXM 141GB", "4.8 TB/s HBM3e")
        + " (same compute as H100 SXM)",
    ),
    "A100 SXM 80GB": DeviceSpec(
        name="A100 SXM 80GB",
        peak_tflops={"float32": 19.5, "tf32": 156.0, "bfloat16": 312.0, "float16": 312.0},
        bandwidth_gbs=2039.0,
        source="datasheet: NVIDIA A100 80GB SXM datasheet (dense: BF16/FP16 312 TFLOPS, TF32 156, "
               "FP32 19.5; 624 / 312 with sparsity), memory bandwidth 2,039 GB/s HBM2e",
    ),
}


def _match_datasheet(gpu_name: str) -> Optional[DeviceSpec]:
    """The built-in spec for a ``torch.cuda.get_device_name`` string, or None.

    Only the exact parts are matched: "NVIDIA H100 80GB HBM3" / "... SXM..." is the SXM5 part
    (H100 PCIe and NVL have lower clocks and bandwidth), "NVIDIA H200" (not GH200, whose memory
    differs), "NVIDIA A100-SXM4-80GB" (not the 40GB or PCIe parts).
    """
    n = gpu_name.upper().replace("-", " ")
    words = n.split()
    if "GH200" in n or "PCIE" in n or "NVL" in words:
        return None
    if "H200" in n:
        return DATASHEET_SPECS["H200"]
    if "H100" in n and ("SXM" in n or "HBM3" in n):
        return DATASHEET_SPECS["H100 SXM"]
    if "A100" in n and "SXM" in n and "80GB" in n:
        return DATASHEET_SPECS["A100 SXM 80GB"]
    return None


def cache_dir() -> str:
    """Where measured specs are kept: ``$VIDEOCONV_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/videoconv``, else ``~/.cache/videoconv``."""
    if os.environ.get("VIDEOCONV_CACHE_DIR"):
        return os.environ["VIDEOCONV_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "videoconv")


_CACHE_FILE = "device_specs.json"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(fn, device: torch.device, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def _gemm_tflops(dtype: torch.dtype, size: int, repeats: int, device: torch.device,
                 target_s: float) -> Tuple[float, int]:
    """Best-of-``repeats`` TFLOP/s of a square GEMM; starts small and doubles ``n`` (up to
    ``size``) while one product is predicted to take less than ``target_s``, so a slow
    (emulated) dtype costs no more time than a fast one."""
    n = min(256, size)
    while True:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        c = torch.empty(n, n, device=device, dtype=dtype)
        t = _best_time(lambda: torch.mm(a, b, out=c), device, 1)  # warm-up and estimate
        if n >= size or t * 8 > target_s:
            break
        n = min(2 * n, size)
    t = min(t, _best_time(lambda: torch.mm(a, b, out=c), device, repeats))
    return 2 * n ** 3 / t / 1e12, n


def _conv3d_tflops(dtype: torch.dtype, size: int, repeats: int, device: torch.device) -> Tuple[float, str]:
    """Best-of-``repeats`` TFLOP/s of a compute-bound 3x3x3 convolution (channels_last_3d).

    Why a convolution besides the GEMM: on a CPU, ``torch.mm`` goes to the BLAS torch was built
    with (MKL on x86 wheels), while every convolution we time goes to oneDNN, which is
    measurably faster here (2-core Zen 4: 0.21 vs 0.19 TFLOP/s in float32, 0.45 vs 0.42 in
    bfloat16). A peak below what the timed kernels reach would put them above 100% of the
    roofline. ``size`` scales the probe so the tests' tiny specs stay cheap:
    C = min(128, size // 16) channels (at least 8) over a 8 x 28 x 28 volume at ``size`` >= 2048.
    """
    channels = max(8, min(128, size // 16))
    extent = (8, 28, 28) if size >= 2048 else (4, 8, 8)
    x = torch.randn(1, channels, *extent, device=device).to(dtype).contiguous(
        memory_format=torch.channels_last_3d)
    w = (torch.randn(channels, channels, 3, 3, 3, device=device) * 0.01).to(dtype).contiguous(
        memory_format=torch.channels_last_3d)
    fn = lambda: torch.nn.functional.conv3d(x, w, padding=1)  # noqa: E731
    t = _best_time(fn, device, 1)  # warm-up (oneDNN builds its kernel on the first call)
    t = min(t, _best_time(fn, device, repeats))
    # Only the taps inside the input count (as in layer_cost): oneDNN skips the zero padding.
    flops = 2 * channels * channels * math.prod(_taps_inside(e, e, 3, 1, 1, 1) for e in extent)
    return flops / t / 1e12, f"conv3d {channels}->{channels} 3x3x3 @{'x'.join(map(str, extent))}"


def _copy_gbs(copy_mb: float, repeats: int, device: torch.device) -> float:
    """STREAM-copy convention: bytes read + bytes written per second (no write-allocate)."""
    numel = max(1, int(copy_mb * 1e6) // 4)
    src = torch.ones(numel, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch the pages
    t = _best_time(lambda: dst.copy_(src), device, repeats)
    return 2 * numel * 4 / t / 1e9


def measure_cpu_spec(size: int = 2048, copy_mb: float = 256, repeats: int = 3,
                     dtypes: Sequence[str] = ("float32", "bfloat16"),
                     device: Union[str, torch.device] = "cpu",
                     target_s: float = 0.25) -> DeviceSpec:
    """Measure a device's peak: per dtype, the faster of a square GEMM (``n`` up to ``size``,
    torch's current thread count) and a compute-bound 3x3x3 convolution (oneDNN on a CPU, see
    :func:`_conv3d_tflops`), and a ``copy_mb`` MB copy, best of ``repeats`` each. Takes ~2-4 s
    with the defaults on a CPU (``target_s`` bounds one GEMM). ``"tf32"`` is reported as the
    float32 figure on a CPU (no TF32 there). Works for a CUDA ``device`` too (the unknown-GPU
    fallback).
    """
    from ..bench.environment import cpu_name

    dev = torch.device(device)
    peaks: Dict[str, float] = {}
    sizes = []
    for name in dtypes:
        dtype = getattr(torch, _dtype_name(name))
        gemm, n = _gemm_tflops(dtype, size, repeats, dev, target_s)
        conv, conv_label = _conv3d_tflops(dtype, size, repeats, dev)
        peaks[_dtype_name(name)] = max(gemm, conv)
        sizes.append(f"{_dtype_name(name)}: GEMM {n}^3 {gemm:.3g}, {conv_label} {conv:.3g} TFLOP/s")
    if dev.type == "cpu" and "float32" in peaks:
        peaks.setdefault("tf32", peaks["float32"])
    gbs = _copy_gbs(copy_mb, repeats, dev)
    if dev.type == "cuda":
        label = torch.cuda.get_device_name(dev)
        where = "CUDA"
    else:
        label = cpu_name()
        where = f"{torch.get_num_threads()} torch threads"
    source = (f"measured: the faster of a square GEMM and a 3x3x3 conv, best of {repeats} "
              f"({'; '.join(sizes)}), and a {copy_mb:g} MB copy (read + write bytes), {where}, "
              f"torch {torch.__version__}")
    return DeviceSpec(name=label, peak_tflops=peaks, bandwidth_gbs=gbs, source=source)


#: What measure_cpu_spec times; part of the disk-cache parameters, so a spec measured by an older
#: version (GEMM only) is measured again rather than reused.
_PROBES = "gemm+conv3d"


def _cache_key(label: str, threads: int) -> str:
    return f"{label} | {threads} threads | torch {torch.__version__}"


def _load(key: str, params: Mapping[str, object]) -> Optional[DeviceSpec]:
    path = os.path.join(cache_dir(), _CACHE_FILE)
    try:
        with open(path) as f:
            entry = json.load(f).get(key)
    except (OSError, ValueError):
        return None
    if not entry or entry.get("params") != dict(params):
        return None
    try:
        return DeviceSpec.from_dict(entry["spec"])
    except (KeyError, TypeError, ValueError):
        return None


def _store(key: str, params: Mapping[str, object], spec: DeviceSpec) -> None:
    directory = cache_dir()
    path = os.path.join(directory, _CACHE_FILE)
    try:
        os.makedirs(directory, exist_ok=True)
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            data = {}
        data[key] = dict(params=dict(params), spec=spec.to_dict())
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)  # atomic: concurrent processes never see half a file
    except OSError:  # a read-only home must not break the benchmark
        pass


@functools.lru_cache(maxsize=None)
def _cached_spec(label: str, threads: int, device: str, disk: bool, size: int, copy_mb: float,
                 repeats: int, dtypes: Tuple[str, ...]) -> DeviceSpec:
    key = _cache_key(label, threads)
    params = dict(size=size, copy_mb=copy_mb, repeats=repeats, dtypes=list(dtypes), probes=_PROBES)
    if disk:
        spec = _load(key, params)
        if spec is not None:
            return spec
    spec = measure_cpu_spec(size=size, copy_mb=copy_mb, repeats=repeats, dtypes=dtypes, device=device)
    if disk:
        _store(key, params, spec)
    return spec


def cpu_spec(disk_cache: bool = True, refresh: bool = False, size: int = 2048, copy_mb: float = 256,
             repeats: int = 3, dtypes: Sequence[str] = ("float32", "bfloat16")) -> DeviceSpec:
    """The measured spec of this CPU at torch's current thread count.

    Measured once per process (``functools.lru_cache``) and, with ``disk_cache``, once per
    machine: the JSON file ``cache_dir()/device_specs.json`` is keyed by CPU model, thread count
    and torch version (and only reused when measured with the same parameters). ``refresh``
    measures again and overwrites both caches.
    """
    from ..bench.environment import cpu_name

    args = (cpu_name(), torch.get_num_threads(), "cpu", bool(disk_cache), int(size), float(copy_mb),
            int(repeats), tuple(_dtype_name(d) for d in dtypes))
    if refresh:
        _cached_spec.cache_clear()
        if disk_cache:
            spec = measure_cpu_spec(size=size, copy_mb=copy_mb, repeats=repeats, dtypes=args[-1])
            _store(_cache_key(args[0], args[1]),
                   dict(size=args[4], copy_mb=args[5], repeats=args[6], dtypes=list(args[7]), probes=_PROBES),
                   spec)
    return _cached_spec(*args)


cpu_spec.cache_clear = _cached_spec.cache_clear  # type: ignore[attr-defined]


def device_spec(device: Union[str, torch.device, None] = None, unknown: str = "measure") -> DeviceSpec:
    """The spec of ``device`` (default: CUDA if available, else the CPU).

    A CUDA device is matched by ``torch.cuda.get_device_name`` against :data:`DATASHEET_SPECS`;
    an unknown GPU is measured like the CPU (``unknown="measure"``, cached the same way) or
    raises ``ValueError`` (``unknown="error"``). The CPU is always measured (:func:`cpu_spec`).
    """
    if unknown not in ("measure", "error"):
        raise ValueError(f"unknown must be 'measure' or 'error', got {unknown!r}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cpu":
        return cpu_spec()
    if dev.type != "cuda":
        raise ValueError(f"no roofline spec for device type {dev.type!r}")
    gpu = torch.cuda.get_device_name(dev)
    spec = _match_datasheet(gpu)
    if spec is not None:
        return spec
    if unknown == "error":
        raise ValueError(f"no datasheet spec for GPU {gpu!r} (known: {', '.join(DATASHEET_SPECS)}); "
                         "pass unknown='measure' to measure its peak")
    return _cached_spec(gpu, 0, str(dev), True, 8192, 1024.0, 5, ("float32", "bfloat16", "float16"))


# ---------------------------------------------------------------------------------------------
# the cost of one layer


@dataclasses.dataclass(frozen=True)
class Pass:
    """One kernel launch of a variant and the bytes it must move."""

    name: str
    read: int
    write: int

    @property
    def bytes(self) -> int:
        return self.read + self.write


@dataclasses.dataclass(frozen=True)
class LayerCost:
    """Minimal FLOPs and bytes of one layer, fused and unfused (see the module docstring)."""

    kind: str  # "conv3d_bn_act" or "conv2plus1d_bn_act"
    dtype: str
    input_shape: Tuple[int, ...]
    output_shape: Tuple[int, ...]
    intermediate_shape: Optional[Tuple[int, ...]]  # (2+1)D only
    macs: int  # the conventional count (every output x every tap), as videoconv.analysis.flops
    flops: int  # 2 * macs
    #: MACs whose input tap is inside the input (taps on zero padding excluded): the roofline's F
    useful_macs: int
    bytes_fused: int
    bytes_unfused: int
    fused_passes: Tuple[Pass, ...]
    unfused_passes: Tuple[Pass, ...]
    #: (2+1)D: two conv3d_bn_act kernels (intermediate written and read once); else bytes_fused
    bytes_fused_per_conv: int

    @property
    def useful_flops(self) -> int:
        """``2 * useful_macs``: the FLOPs the roofline counts (see the module docstring)."""
        return 2 * self.useful_macs

    @property
    def bytes_conv_only(self) -> int:
        """Bytes of the unfused chain's convolution passes alone (the bench's ``conv-only``)."""
        return sum(p.bytes for p in self.unfused_passes if p.name.startswith("conv"))

    @property
    def intensity_fused(self) -> float:
        """Useful FLOP per byte of the fused variant."""
        return self.useful_flops / self.bytes_fused

    @property
    def intensity_unfused(self) -> float:
        return self.useful_flops / self.bytes_unfused

    intensity = intensity_fused  # "the" arithmetic intensity of the layer

    def to_dict(self) -> Dict[str, object]:
        d = dataclasses.asdict(self)
        d.update(useful_flops=self.useful_flops, bytes_conv_only=self.bytes_conv_only,
                 intensity_fused=self.intensity_fused,
                 intensity_unfused=self.intensity_unfused)
        return d


def _triple(v, what: str) -> Tuple[int, int, int]:
    if isinstance(v, int):
        return (v, v, v)
    v = tuple(int(x) for x in v)
    if len(v) != 3:
        raise ValueError(f"{what} must be an int or 3 ints, got {v!r}")
    return v


def _norm_conv(c: Mapping[str, object]) -> Dict[str, object]:
    w = tuple(int(x) for x in c["weight"])
    if len(w) != 5:
        raise ValueError(f"a Conv3d weight has 5 dims (C_out, C_in/groups, kT, kH, kW), got {w}")
    return dict(weight=w, stride=_triple(c.get("stride", 1), "stride"),
                padding=_triple(c.get("padding", 0), "padding"),
                dilation=_triple(c.get("dilation", 1), "dilation"), groups=int(c.get("groups", 1)))


def _taps_inside(size: int, out: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Along one dimension: how many (output position, kernel tap) pairs read an input element
    rather than the zero padding."""
    return sum(1 for o in range(out) for j in range(kernel)
               if 0 <= o * stride - padding + j * dilation < size)


def _useful_macs(shape: Tuple[int, ...], out: Tuple[int, ...], c: Mapping[str, object]) -> int:
    w = c["weight"]
    taps = math.prod(_taps_inside(shape[2 + i], out[2 + i], w[2 + i], c["stride"][i], c["padding"][i],
                                  c["dilation"][i]) for i in range(3))
    return shape[0] * w[0] * w[1] * taps


def _conv_out(shape: Tuple[int, ...], c: Mapping[str, object]) -> Tuple[int, ...]:
    n, cin = shape[:2]
    w = c["weight"]
    if cin != w[1] * c["groups"]:
        raise ValueError(f"input has {cin} channels but weight {w} with groups={c['groups']} "
                         f"expects {w[1] * c['groups']}")
    spatial = conv_output_shape(shape[2:], w[2:], c["stride"], c["padding"], c["dilation"])
    return (n, w[0]) + tuple(spatial)


def layer_cost(layer, dtype: DtypeLike = "float32", *, weight: Optional[Sequence[int]] = None,
               stride=1, padding=0, dilation=1, groups: int = 1,
               convs: Optional[Sequence[Mapping[str, object]]] = None,
               residual: bool = False, activation: str = "relu") -> LayerCost:
    """Minimal FLOPs and bytes of one layer in ``dtype``, fused and unfused.

    ``layer`` is a :class:`videoconv.bench.layers.LayerWorkload` (its convs, residual and
    activation are used; the keyword arguments must then be left out), or the input shape
    ``(N, C, T, H, W)`` with either

    * ``weight`` (``(C_out, C_in/groups, kT, kH, kW)``) and ``stride``/``padding``/``dilation``/
      ``groups``: one ``conv3d_bn_act``; or
    * ``convs``: a list of one or two dicts ``{"weight", "stride", "padding", "dilation",
      "groups"}`` (LayerWorkload's format), two meaning a ``conv2plus1d_bn_act`` unit in the
      order applied (each conv with its own stride/padding, as the module holds them).

    >>> c = layer_cost((1, 2, 1, 2, 2), weight=(3, 2, 1, 1, 1), activation="identity")
    >>> c.flops, c.bytes_fused, c.bytes_unfused
    (48, 128, 248)
    """
    name = _dtype_name(dtype)
    es = _ELEMENT_SIZE[name]
    if hasattr(layer, "convs") and hasattr(layer, "input_shape"):  # a LayerWorkload
        if weight is not None or convs is not None:
            raise ValueError("pass either a LayerWorkload or explicit shapes, not both")
        conv_list = [_norm_conv(c) for c in layer.convs]
        input_shape = tuple(int(x) for x in layer.input_shape)
        residual, activation = bool(layer.residual), str(layer.activation)
    else:
        input_shape = tuple(int(x) for x in layer)
        if (weight is None) == (convs is None):
            raise ValueError("give exactly one of weight= (one conv) or convs= (one or two convs)")
        if weight is not None:
            conv_list = [_norm_conv(dict(weight=weight, stride=stride, padding=padding,
                                         dilation=dilation, groups=groups))]
        else:
            conv_list = [_norm_conv(c) for c in convs]
    if len(input_shape) != 5:
        raise ValueError(f"input shape must be (N, C, T, H, W), got {input_shape}")
    if len(conv_list) not in (1, 2):
        raise ValueError(f"a layer has one conv (conv3d_bn_act) or two (conv2plus1d_bn_act), got {len(conv_list)}")
    activation = {"swish": "silu"}.get(activation, activation)
    has_act = activation != "identity"

    shapes = [input_shape]
    macs = useful = 0
    for c in conv_list:
        out = _conv_out(shapes[-1], c)
        macs += math.prod(out) * math.prod(c["weight"][1:])
        useful += _useful_macs(shapes[-1], out, c)
        shapes.append(out)
    numel = [math.prod(s) for s in shapes]
    weights = [math.prod(c["weight"]) for c in conv_list]
    chans = [c["weight"][0] for c in conv_list]
    x, y = numel[0], numel[-1]
    res = y if residual else 0

    fused = (Pass("fused", es * (x + sum(weights) + 2 * sum(chans) + res), es * y),)
    unfused: List[Pass] = []
    per_conv: List[Pass] = []
    two = len(conv_list) == 2
    for i, c in enumerate(conv_list):
        tag = str(i + 1) if two else ""
        src, dst, ch = numel[i], numel[i + 1], chans[i]
        last = i == len(conv_list) - 1
        unfused.append(Pass(f"conv{tag}", es * (src + weights[i]), es * dst))
        unfused.append(Pass(f"bn{tag}", es * (dst + 4 * ch), es * dst))
        if last and residual:
            unfused.append(Pass("add", es * 2 * dst, es * dst))
        if has_act:
            unfused.append(Pass(f"act{tag}", es * dst, es * dst))
        per_conv.append(Pass(f"conv{tag}_bn_act", es * (src + weights[i] + 2 * ch + (res if last else 0)),
                             es * dst))
    bytes_fused = sum(p.bytes for p in fused)
    return LayerCost(
        kind="conv2plus1d_bn_act" if two else "conv3d_bn_act", dtype=name,
        input_shape=input_shape, output_shape=shapes[-1], intermediate_shape=shapes[1] if two else None,
        macs=macs, flops=2 * macs, useful_macs=useful, bytes_fused=bytes_fused,
        bytes_unfused=sum(p.bytes for p in unfused), fused_passes=fused, unfused_passes=tuple(unfused),
        bytes_fused_per_conv=sum(p.bytes for p in per_conv) if two else bytes_fused,
    )


# ---------------------------------------------------------------------------------------------
# bounds, attainable rates and what a measurement achieved


@dataclasses.dataclass(frozen=True)
class RooflineTime:
    """Lower-bound times (seconds) of a layer on a device, fused and unfused."""

    fused_s: float
    unfused_s: float
    compute_s: float  # flops / peak (the same for both variants)
    memory_fused_s: float
    memory_unfused_s: float

    @property
    def fusion_headroom(self) -> float:
        """``unfused_s / fused_s``: the most fusion can win on an ideal machine (>= 1)."""
        return self.unfused_s / self.fused_s

    @property
    def fused_bound(self) -> str:
        return "compute" if self.compute_s >= self.memory_fused_s else "memory"

    @property
    def unfused_bound(self) -> str:
        return "compute" if self.compute_s >= self.memory_unfused_s else "memory"


def roofline_time(cost: LayerCost, spec: DeviceSpec, dtype: Optional[DtypeLike] = None) -> RooflineTime:
    """``max(flops / peak, bytes / bandwidth)`` for the fused and unfused variant of ``cost``.

    ``dtype`` picks the peak (default: the cost's dtype; pass ``"tf32"`` for float32 convs on a
    GPU where TF32 is allowed, see :func:`math_dtype`)."""
    peak = spec.peak(dtype if dtype is not None else cost.dtype) * 1e12
    bw = spec.bandwidth_gbs * 1e9
    compute = cost.useful_flops / peak
    mf, mu = cost.bytes_fused / bw, cost.bytes_unfused / bw
    return RooflineTime(fused_s=max(compute, mf), unfused_s=max(compute, mu), compute_s=compute,
                        memory_fused_s=mf, memory_unfused_s=mu)


def attainable(intensity: float, spec: DeviceSpec, dtype: DtypeLike) -> float:
    """Attainable TFLOP/s at arithmetic ``intensity`` (FLOP/byte): ``min(peak, intensity * bw)``."""
    return min(spec.peak(dtype), intensity * spec.bandwidth_gbs * 1e9 / 1e12)


@dataclasses.dataclass(frozen=True)
class Achieved:
    """What one measured run achieved against the roofline."""

    time_s: float
    tflops: float  # useful flops / time
    gbs: float  # minimal bytes of the variant / time (effective, not the hardware counter)
    bound_s: float  # the roofline bound of the variant
    pct_of_roofline: float  # 100 * bound_s / time_s


def achieved(cost: LayerCost, time_ms: float, spec: DeviceSpec, dtype: Optional[DtypeLike] = None,
             fused: bool = True) -> Achieved:
    """Achieved TFLOP/s, effective GB/s and % of the roofline bound of a run taking ``time_ms``.

    ``fused`` says which variant ran (its minimal bytes and bound are used): ``True`` for the
    fused op, ``False`` for the eager chain."""
    if not time_ms > 0:
        raise ValueError(f"time_ms must be positive, got {time_ms}")
    t = time_ms * 1e-3
    bounds = roofline_time(cost, spec, dtype)
    nbytes = cost.bytes_fused if fused else cost.bytes_unfused
    bound = bounds.fused_s if fused else bounds.unfused_s
    return Achieved(time_s=t, tflops=cost.useful_flops / t / 1e12, gbs=nbytes / t / 1e9, bound_s=bound,
                    pct_of_roofline=100.0 * bound / t)


def fusion_summary(cost: LayerCost, spec: DeviceSpec, dtype: Optional[DtypeLike] = None,
                   eager_ms: Optional[float] = None, fused_ms: Optional[float] = None) -> Dict[str, object]:
    """One report row: the bounds, ``fusion_headroom`` (the most fusion can win) and, given
    measured times, ``fusion_won = eager_ms / fused_ms`` with each run's % of roofline."""
    bounds = roofline_time(cost, spec, dtype)
    row: Dict[str, object] = dict(
        kind=cost.kind, dtype=cost.dtype, gflops=cost.flops / 1e9, useful_gflops=cost.useful_flops / 1e9,
        mb_fused=cost.bytes_fused / 1e6, mb_unfused=cost.bytes_unfused / 1e6,
        intensity_fused=cost.intensity_fused, intensity_unfused=cost.intensity_unfused,
        bound_fused_ms=bounds.fused_s * 1e3, bound_unfused_ms=bounds.unfused_s * 1e3,
        fused_bound=bounds.fused_bound, unfused_bound=bounds.unfused_bound,
        fusion_headroom=bounds.fusion_headroom, device=spec.name,
    )
    if eager_ms is not None:
        row["eager_pct_of_roofline"] = achieved(cost, eager_ms, spec, dtype, fused=False).pct_of_roofline
    if fused_ms is not None:
        row["fused_pct_of_roofline"] = achieved(cost, fused_ms, spec, dtype, fused=True).pct_of_roofline
    if eager_ms is not None and fused_ms is not None:
        row["fusion_won"] = eager_ms / fused_ms
    return row
