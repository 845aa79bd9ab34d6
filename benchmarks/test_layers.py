"""Per-layer forward: every distinct fused layer of the zoo models, per provider and dtype.

Workloads come from :func:`videoconv.bench.layers.trace_layers`; providers are those of
``videoconv bench --layers`` (:func:`videoconv.bench.layers._provider`), built from the same
original modules: ``eager`` (conv -> bn [+res] -> act), ``conv-only`` (the eager convolutions
alone: the floor for epilogue fusion), ``videoconv`` (the fused module), ``compile`` (on request).
One group per (layer, dtype): the providers of a group are comparable, and their ids are stable.
"""

from __future__ import annotations

import copy

import pytest
import torch

from videoconv.bench.layers import _provider
from videoconv.bench.zoo import DTYPES

OPTIONAL = ("compile",)


def test_layer(benchmark, layer_case, vc_run):
    wl, dt, provider, device = layer_case.workload, layer_case.dtype, layer_case.provider, layer_case.device
    dtype = DTYPES[dt]
    benchmark.group = layer_case.group
    benchmark.extra_info.update(
        workload=wl.label, model=wl.model, layer=wl.name, kind=wl.kind, count=wl.count,
        input_shape=list(wl.input_shape), output_shape=list(wl.output_shape),
        macs=wl.macs, gmacs=wl.macs / 1e9, provider=provider, dtype=dt, device=str(device),
        layout="channels_last_3d",
    )
    torch.manual_seed(0)
    module = copy.deepcopy(wl.module).to(device=device, dtype=dtype,
                                         memory_format=torch.channels_last_3d).eval()
    x = torch.randn(wl.input_shape, device=device, dtype=dtype).contiguous(
        memory_format=torch.channels_last_3d)
    r = (torch.randn(wl.output_shape, device=device, dtype=dtype).contiguous(
        memory_format=torch.channels_last_3d) if wl.residual else None)
    if provider == "compile":
        torch._dynamo.reset()  # every layer shares one forward: start each from a clean cache
    try:
        # Outside inference_mode: building must not turn parameters into inference tensors.
        with torch.no_grad():
            fn = _provider(provider, module, x, r)
    except Exception as exc:
        if provider in OPTIONAL:
            pytest.skip(f"{provider} cannot run {wl.label} {dt}: {type(exc).__name__}: {exc}")
        raise
    vc_run(fn, flops=2 * wl.macs)
