"""Per-layer workloads traced from the zoo (videoconv.bench.layers): what is traced, and that
every provider of a workload computes the same function. (Timing itself is not tested.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from videoconv import models
from videoconv.analysis import count_flops
from videoconv.bench.layers import _eager_chain, trace_layers


@pytest.mark.parametrize("name", ["r3d_18", "r2plus1d_18"])
def test_traced_layers_cover_every_conv_of_the_model(name):
    model = models.get_model(name).eval()
    shape = (1, 3, 8, 32, 32)
    workloads = trace_layers(name, shape[1:])
    conv_macs = count_flops(model, shape).total_macs - model.fc.in_features * model.fc.out_features
    assert sum(w.count * w.macs for w in workloads) == conv_macs
    kinds = {w.kind for w in workloads}
    assert kinds == ({"conv3d_bn_act"} if name == "r3d_18" else {"conv2plus1d_bn_act"}) or (
        name == "r2plus1d_18" and kinds == {"conv2plus1d_bn_act", "conv3d_bn_act"})
    # signatures are distinct, and residual layers are found
    assert len({w.label for w in workloads}) == len(workloads)
    assert any(w.residual for w in workloads)


def test_x3d_layers_include_depthwise_and_silu():
    workloads = trace_layers("x3d_s", (3, 4, 64, 64))
    assert any(c["groups"] == c["weight"][0] > 1 for w in workloads for c in w.convs)
    assert any(w.activation == "silu" for w in workloads)


@pytest.mark.parametrize("name", ["r3d_18", "r2plus1d_18", "x3d_s"])
def test_eager_chain_and_fused_module_agree_on_every_workload(name):
    for w in trace_layers(name, (3, 4, 32, 32))[:4]:
        module = w.module.double()
        x = torch.randn(w.input_shape, dtype=torch.float64)
        r = torch.randn(w.output_shape, dtype=torch.float64) if w.residual else None
        with torch.no_grad():
            expected = _eager_chain(module, conv_only=False)(x, r)
            got = module.float()(x.float(), None if r is None else r.float())
        assert got.shape == tuple(w.output_shape)
        torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)


def test_cli_layer_benchmark_smoke(tmp_path):
    out = tmp_path / "layers.json"
    result = subprocess.run(
        [sys.executable, "-m", "videoconv", "bench", "--layers", "r3d_18", "--smoke", "--dtype",
         "float32", "--providers", "eager,conv-only,videoconv", "--max-layers", "3", "--json",
         str(out), "--no-progress"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert {r["provider"] for r in rows} == {"eager", "conv-only", "videoconv"}
    assert {r["level"] for r in rows} == {"layer"}  # --layers alone: no whole models
    assert len({r["workload"] for r in rows}) == 3
    for r in rows:
        assert r["median_ms"] > 0 and r["speedup_vs_eager"] > 0 and r["fusion_bound"] > 0
        assert r["device"] == data["environment"]["device"]
        assert r["roofline_headroom"] >= 1.0  # the unfused chain moves more bytes
        # percent of a roofline from *measured* CPU ceilings (a GEMM and a copy): a layer can
        # beat that GEMM, and a fresh CI machine measures it once, so no upper limit here
        assert r["gbs"] > 0 and r["pct_of_roofline"] > 0
        assert r["peak_mem_mb"] >= 0
    assert data["environment"]["roofline"]["bandwidth_gbs"] > 0
    assert "fusion bound" in result.stdout and "headroom" in result.stdout
