"""Whole-model forward of the reference zoo, per provider and dtype.

Providers are :data:`videoconv.bench.zoo.PROVIDERS` (those of ``videoconv bench``): ``eager``
(the ``nn.Conv3d`` model), ``conv-only`` (BatchNorms and activations removed: a bound, not the
same function), ``videoconv`` (``videoconv.fuse(model)``), ``compile`` (inductor with
freezing; skipped where it does not work), ``openvino`` (CPU, on request, when installed).
Batch 1, eval mode, channels_last_3d; one group per (model at its clip, dtype).
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from videoconv import models as zoo
from videoconv.analysis import count_flops, count_params
from videoconv.bench.zoo import DTYPES, PROVIDERS, ProviderUnavailable

OPTIONAL = ("compile", "openvino")


@functools.lru_cache(maxsize=1)  # cases are ordered model-major: keep only the current model
def _reference(model: str):
    torch.manual_seed(0)
    return zoo.get_model(model).eval()


@functools.lru_cache(maxsize=None)
def _counts(model: str, shape):
    reference = _reference(model)
    return count_params(reference), count_flops(reference, shape).total_macs


def test_model(benchmark, model_case, vc_run):
    c = model_case
    dtype = DTYPES[c.dtype]
    params, macs = _counts(c.model, c.input_shape)
    benchmark.group = c.group
    benchmark.extra_info.update(
        workload=c.label, model=c.model, input_shape=list(c.input_shape), params=params,
        macs=macs, gmacs=macs / 1e9, provider=c.provider, dtype=c.dtype, device=str(c.device),
        layout="channels_last_3d",
    )
    model = copy.deepcopy(_reference(c.model)).to(device=c.device, dtype=dtype,
                                                  memory_format=torch.channels_last_3d)
    torch.manual_seed(0)
    x = torch.randn(c.input_shape, device=c.device, dtype=dtype).contiguous(
        memory_format=torch.channels_last_3d)
    if c.provider == "compile":
        torch._dynamo.reset()  # models share forwards (one class, many depths): clean cache each time
    try:
        # Outside inference_mode: fusing must not turn the parameters into inference tensors.
        with torch.no_grad():
            fn = PROVIDERS[c.provider](model, x)
    except ProviderUnavailable as exc:
        pytest.skip(f"{c.provider} on {c.label} {c.dtype}: {exc}")
    except Exception as exc:
        if c.provider in OPTIONAL:
            pytest.skip(f"{c.provider} cannot run {c.label} {c.dtype}: {type(exc).__name__}: {exc}")
        raise
    vc_run(fn, flops=2 * macs)
