"""Whole-model forward of the reference zoo, per provider and dtype.

Providers are those of ``videoconv bench`` (:mod:`videoconv.bench.providers`): ``eager`` (the
``nn.Conv3d`` model), ``conv-only`` (BatchNorms and activations removed: a bound, not the same
function), ``videoconv`` (``videoconv.fuse(model)``), ``compile`` (inductor with freezing;
skipped where it does not work), and on request ``eager-ncdhw``, ``videoconv-<backend>``,
``openvino`` (CPU, when installed). Batch 1, eval mode; one group per (model at its clip, dtype).
"""

from __future__ import annotations

import functools

import pytest

from videoconv.bench import providers as prov
from videoconv.bench.suite import DTYPES, model_workload

OPTIONAL = ("compile", "compile-max-autotune", "openvino")


@functools.lru_cache(maxsize=1)  # cases are ordered model-major: keep only the current model
def _workload(model: str, smoke: bool):
    return model_workload(model, smoke)


def test_model(benchmark, model_case, vc_run, vc_settings):
    c = model_case
    wl = _workload(c.model, vc_settings.smoke)
    assert tuple(wl.input_shapes[0]) == tuple(c.input_shape)
    benchmark.group = c.group
    benchmark.extra_info.update(
        workload=c.label, model=c.model, input_shape=list(c.input_shape),
        macs=wl.macs, gmacs=wl.macs / 1e9, provider=c.provider, dtype=c.dtype, device=str(c.device),
        layout="contiguous" if c.provider == "eager-ncdhw" else "channels_last_3d",
    )
    try:
        fn = prov.runner(prov.prepare(c.provider, wl, DTYPES[c.dtype], c.device, "fwd"), "fwd", wl.level)
    except prov.ProviderUnavailable as exc:
        pytest.skip(f"{c.provider} on {c.label} {c.dtype}: {exc}")
    except Exception as exc:
        if c.provider in OPTIONAL:
            pytest.skip(f"{c.provider} cannot run {c.label} {c.dtype}: {type(exc).__name__}: {exc}")
        raise
    vc_run(fn, flops=2 * wl.macs)
