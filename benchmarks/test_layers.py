"""Per-layer forward: every distinct fused layer of the zoo models, per provider and dtype.

Workloads come from :func:`videoconv.bench.suite.layer_workloads` (traced from the models);
providers are those of ``videoconv bench`` (:mod:`videoconv.bench.providers`), built from the
same original modules: ``eager`` (conv -> bn [+res] -> act), ``conv-only`` (the eager
convolutions alone: the floor for epilogue fusion), ``videoconv`` (the fused module), and on
request ``eager-ncdhw``, ``compile``, ``videoconv-<backend>``, ``openvino``.
One group per (layer, dtype): the providers of a group are comparable, and their ids are stable.
"""

from __future__ import annotations

import pytest

from videoconv.bench import providers as prov
from videoconv.bench.suite import DTYPES

OPTIONAL = ("compile", "compile-max-autotune", "openvino")


def test_layer(benchmark, layer_case, vc_run):
    wl, dt, provider, device = layer_case.workload, layer_case.dtype, layer_case.provider, layer_case.device
    traced = wl.layers[0][0]  # the LayerWorkload: module path and output shape
    benchmark.group = layer_case.group
    benchmark.extra_info.update(
        workload=wl.label, model=wl.model, layer=traced.name, kind=wl.kind, count=wl.count,
        input_shape=list(traced.input_shape), output_shape=list(traced.output_shape),
        macs=wl.macs, gmacs=wl.macs / 1e9, provider=provider, dtype=dt, device=str(device),
        layout="contiguous" if provider == "eager-ncdhw" else "channels_last_3d",
    )
    try:
        fn = prov.runner(prov.prepare(provider, wl, DTYPES[dt], device, "fwd"), "fwd", wl.level)
    except prov.ProviderUnavailable as exc:
        pytest.skip(f"{provider} on {wl.label} {dt}: {exc}")
    except Exception as exc:
        if provider in OPTIONAL:
            pytest.skip(f"{provider} cannot run {wl.label} {dt}: {type(exc).__name__}: {exc}")
        raise
    vc_run(fn, flops=2 * wl.macs)
