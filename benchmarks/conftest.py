"""pytest-benchmark suite over the zoo's workloads: options, parametrization, timing.

Run ``pytest benchmarks --benchmark-only`` (see benchmarks/README.md). Nothing here is
collected by ``make test``: pyproject's ``testpaths`` is ``tests`` and ``make test`` names
``tests videoconv`` explicitly.

Workloads are never typed by hand: per-layer ones come from
:func:`videoconv.bench.suite.layer_workloads` (the distinct fused layers of a zoo model, traced
from the model itself), whole models from :mod:`videoconv.models`. Each test is one
(workload, dtype, provider, device); ``benchmark.group`` is the workload and dtype, so a group
lines up the providers of one workload, and test ids are built only from the workload itself
(labels derived from shapes), so ``--benchmark-compare`` matches them across revisions.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import time
from typing import Callable, List, Optional, Tuple

import pytest
import torch

#: Models whose layers are traced by default (the per-layer goals' models, and the two other
#: families that trace cheaply). ``--vc-models`` overrides.
LAYER_MODELS = ("r3d_18", "r2plus1d_18", "x3d_s", "x3d_m", "slowfast_r50")
#: ``--vc-smoke`` defaults, so that a smoke run takes a minute or two on 2 CPU cores (most of it
#: compiling): per-layer, one model per layer kind (conv3d, (2+1)D, depthwise + SiLU); whole
#: models, one.
SMOKE_LAYER_MODELS = ("r3d_18", "r2plus1d_18", "x3d_s")
SMOKE_MODEL_MODELS = ("r3d_18",)
#: Per-layer providers by default (``compile`` per layer costs seconds of compilation per test;
#: ask for it with ``--vc-providers``).
LAYER_PROVIDERS = ("eager", "conv-only", "videoconv")
MODEL_PROVIDERS = ("eager", "conv-only", "videoconv", "compile")
#: Providers whose failing to build is a skip, not a failure (an optional baseline).
OPTIONAL_PROVIDERS = ("compile", "openvino")


def pytest_addoption(parser):
    group = parser.getgroup("videoconv", "videoconv benchmarks (benchmarks/)")
    group.addoption("--vc-models", default=None,
                    help="comma-separated zoo models, or 'all' (default: per-layer "
                         f"{','.join(LAYER_MODELS)}, whole models the whole zoo; with "
                         f"--vc-smoke: per-layer {','.join(SMOKE_LAYER_MODELS)}, whole models "
                         f"{','.join(SMOKE_MODEL_MODELS)})")
    group.addoption("--vc-dtypes", default=None,
                    help="comma-separated dtypes (default: float32,bfloat16 on CPU, "
                         "float32,bfloat16,float16 on CUDA)")
    group.addoption("--vc-providers", default=None,
                    help="comma-separated providers of videoconv bench (default: per-layer "
                         f"{','.join(LAYER_PROVIDERS)}; whole models {','.join(MODEL_PROVIDERS)})")
    group.addoption("--vc-device", default=None,
                    help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    group.addoption("--vc-smoke", action="store_true", default=False,
                    help="tiny clips (each model's test_input_shape) and 3 rounds: proves the "
                         "suite runs; its numbers mean little")


# ---------------------------------------------------------------------------------------------
# options


@dataclasses.dataclass(frozen=True)
class Settings:
    device: torch.device
    dtypes: Tuple[str, ...]
    smoke: bool
    models: Optional[Tuple[str, ...]]  # None: each suite's default
    providers: Optional[Tuple[str, ...]]  # None: each suite's default


def _split(value: Optional[str]) -> Optional[Tuple[str, ...]]:
    if value is None:
        return None
    return tuple(v.strip() for v in value.split(",") if v.strip())


@functools.lru_cache(maxsize=None)
def _settings_cached(device, dtypes, smoke, models, providers) -> Settings:
    from videoconv import models as zoo
    from videoconv.bench.suite import DTYPES

    if device is None:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except RuntimeError as exc:
            raise pytest.UsageError(f"--vc-device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--vc-device cuda: torch sees no CUDA GPU")
    if dev.type not in ("cpu", "cuda"):
        raise pytest.UsageError(f"--vc-device {device!r}: only cpu and cuda are benchmarked")
    dts = _split(dtypes) or (("float32", "bfloat16", "float16") if dev.type == "cuda"
                             else ("float32", "bfloat16"))
    for dt in dts:
        if dt not in DTYPES:
            raise pytest.UsageError(f"--vc-dtypes: unknown dtype {dt!r}; choose from {', '.join(DTYPES)}")
    names = _split(models)
    if names == ("all",):
        names = tuple(zoo.list_models())
    for name in names or ():
        if name not in zoo.list_models():
            raise pytest.UsageError(f"--vc-models: unknown model {name!r}; known: {', '.join(zoo.list_models())}")
    provs = _split(providers)
    if provs is not None:
        from videoconv.bench.providers import provider_names

        for p in provs:
            if p not in provider_names():
                raise pytest.UsageError(f"--vc-providers: unknown provider {p!r}; choose from "
                                        f"{', '.join(provider_names())}")
    return Settings(device=dev, dtypes=dts, smoke=smoke, models=names, providers=provs)


def settings(config) -> Settings:
    return _settings_cached(config.getoption("--vc-device"), config.getoption("--vc-dtypes"),
                            config.getoption("--vc-smoke"), config.getoption("--vc-models"),
                            config.getoption("--vc-providers"))


# ---------------------------------------------------------------------------------------------
# workloads and stable ids


def _slug(text: str) -> str:
    """A test-id-safe form of a workload label: no spaces, '/', '[' or '::', deterministic."""
    text = text.replace("->", "to").replace(" / ", "+").replace("@", "at").replace("+res", "res")
    return re.sub(r"[^A-Za-z0-9_.+]+", "-", text).strip("-")


@functools.lru_cache(maxsize=None)
def traced_layers(model: str, smoke: bool):
    """The distinct fused layers of ``model`` as benchmark workloads (float32, CPU), at its test
    clip when ``smoke``."""
    from videoconv.bench.suite import layer_workloads

    torch.manual_seed(0)
    return tuple(layer_workloads(model, smoke))


def model_input_shape(model: str, smoke: bool, batch: int = 1) -> Tuple[int, ...]:
    from videoconv import models as zoo

    spec = zoo.get_model_spec(model)
    return (batch,) + tuple(spec.test_input_shape if smoke else spec.input_shape)


@dataclasses.dataclass(frozen=True)
class LayerCase:
    workload: object  # videoconv.bench.providers.Workload (level 'layer')
    dtype: str
    provider: str
    device: torch.device

    @property
    def group(self) -> str:
        return f"{self.workload.label} {self.dtype}"


@dataclasses.dataclass(frozen=True)
class ModelCase:
    model: str
    input_shape: Tuple[int, ...]
    dtype: str
    provider: str
    device: torch.device

    @property
    def label(self) -> str:
        return f"{self.model} @{'x'.join(map(str, self.input_shape))}"

    @property
    def group(self) -> str:
        return f"{self.label} {self.dtype}"


def _device_id(device: torch.device) -> str:
    return device.type  # cuda:0 and cuda:1 are the same kind of run


def layer_cases(s: Settings) -> Tuple[List[LayerCase], List[str]]:
    models = s.models or (SMOKE_LAYER_MODELS if s.smoke else LAYER_MODELS)
    providers = list(s.providers) if s.providers is not None else list(LAYER_PROVIDERS)
    cases, ids, seen = [], [], set()
    for model in models:
        for wl in traced_layers(model, s.smoke):
            slug = _slug(wl.label)
            n = 2
            while slug in seen:  # labels omit padding/dilation: never seen to collide, but be safe
                slug = f"{_slug(wl.label)}-v{n}"
                n += 1
            seen.add(slug)
            for dt in s.dtypes:
                for p in providers:
                    cases.append(LayerCase(wl, dt, p, s.device))
                    ids.append(f"{slug}-{dt}-{p}-{_device_id(s.device)}")
    return cases, ids


def model_cases(s: Settings) -> Tuple[List[ModelCase], List[str]]:
    from videoconv import models as zoo

    models = s.models or (SMOKE_MODEL_MODELS if s.smoke else tuple(zoo.list_models()))
    providers = list(s.providers) if s.providers is not None else list(MODEL_PROVIDERS)
    cases, ids = [], []
    for model in models:
        shape = model_input_shape(model, s.smoke)
        for dt in s.dtypes:
            for p in providers:
                case = ModelCase(model, shape, dt, p, s.device)
                cases.append(case)
                ids.append(f"{model}-{'x'.join(map(str, shape))}-{dt}-{p}-{_device_id(s.device)}")
    return cases, ids


def pytest_generate_tests(metafunc):
    if "layer_case" in metafunc.fixturenames:
        cases, ids = layer_cases(settings(metafunc.config))
        metafunc.parametrize("layer_case", cases, ids=ids)
    if "model_case" in metafunc.fixturenames:
        cases, ids = model_cases(settings(metafunc.config))
        metafunc.parametrize("model_case", cases, ids=ids)


# ---------------------------------------------------------------------------------------------
# timing


def _round_plan(config, one_call_s: float, smoke: bool) -> Tuple[int, int]:
    """(rounds, iterations) from pytest-benchmark's own budget options, for pedantic mode."""
    if smoke:
        return 3, 1
    min_rounds = config.getoption("benchmark_min_rounds", 5) or 5
    max_time = config.getoption("benchmark_max_time", 1.0) or 1.0
    min_time = config.getoption("benchmark_min_time", 5e-6) or 5e-6
    one_call_s = max(one_call_s, 1e-7)
    iterations = max(1, math.ceil(float(min_time) / one_call_s))
    rounds = int(float(max_time) / (one_call_s * iterations))
    return max(int(min_rounds), min(rounds, 10_000)), iterations


def run_benchmark(benchmark, request, fn: Callable[[], object], device: torch.device, smoke: bool,
                  flops: Optional[float] = None):
    """Time ``fn`` with ``benchmark.pedantic`` under ``torch.inference_mode()``.

    One untimed call first (oneDNN creates and caches its primitives, cuDNN picks algorithms,
    the CUDA context and Triton kernels load), one more to size the rounds, then pedantic's own
    warm-up rounds. On CUDA the timed function synchronizes, so a round is the GPU's time.
    """
    if device.type == "cuda":
        def call():
            fn()
            torch.cuda.synchronize(device)
    else:
        call = fn

    with torch.inference_mode():
        call()
        start = time.perf_counter()
        call()
        one = time.perf_counter() - start
        rounds, iterations = _round_plan(request.config, one, smoke)
        result = benchmark.pedantic(call, rounds=rounds, iterations=iterations,
                                    warmup_rounds=1 if smoke else 2)
    stats = getattr(benchmark, "stats", None)
    if flops and stats is not None and getattr(stats, "stats", None) is not None:
        median = stats.stats.median
        if median > 0:
            benchmark.extra_info["tflops_median"] = flops / median / 1e12
    return result


@pytest.fixture
def vc_settings(request) -> Settings:
    return settings(request.config)


@pytest.fixture
def vc_run(benchmark, request, vc_settings):
    """``vc_run(fn, flops=None)``: time ``fn`` (a zero-argument forward) for this test."""
    def run(fn, flops=None):
        return run_benchmark(benchmark, request, fn, vc_settings.device, vc_settings.smoke, flops)
    return run


def device_name(device: torch.device) -> str:
    from videoconv.bench.environment import device_name as name

    return name(device)


def pytest_configure(config):
    # The same allocator setting as `videoconv bench` (see videoconv/bench/timing.py), before
    # any benchmark allocates.
    from videoconv.bench.timing import pin_host_allocator

    pin_host_allocator()


def pytest_benchmark_update_machine_info(config, machine_info):
    """What a saved run needs to be read later: versions, revision, device, backends."""
    try:
        import videoconv
        from videoconv import backends
        from videoconv.bench.environment import git_revision
        from videoconv.bench.timing import pin_host_allocator

        s = settings(config)
        machine_info["videoconv"] = {
            "version": videoconv.__version__,
            "git_revision": git_revision(),
            "torch": torch.__version__,
            "device": device_name(s.device),
            "smoke": s.smoke,
            "backends_available": [n for n, why in backends.available().items() if not why],
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch_threads": torch.get_num_threads(),
            "host_allocator": pin_host_allocator(),
        }
    except Exception as exc:  # machine info must never break a run
        machine_info["videoconv"] = {"error": f"{type(exc).__name__}: {exc}"}
