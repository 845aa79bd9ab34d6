"""Generic checks that every registered zoo model must pass.

Model-specific checks (torchvision equivalence, inflation fixed point, block structure) live in
test_models_*.py. Here: the registry, forward at the standard clip, the published parameter
count, numerics of channels_last_3d / float32 / bfloat16 against a float64 run of the same
weights, and the errors for bad clips.
"""

from __future__ import annotations

import pytest
import torch

import videoconv.models as zoo
from videoconv.analysis import count_flops, count_params
from reference_impls import randomise_batch_norm

EXPECTED_MODELS = {
    "c3d",
    "r3d_18",
    "r3d_34",
    "mc3_18",
    "r2plus1d_18",
    "r2plus1d_34",
    "i3d",
    "slowfast_r50",
    "x3d_s",
    "x3d_m",
    "csn_r101",
    "c2d_r18",
}
ALL = zoo.list_models()

# Where oneDNN has no bfloat16 convolution (AVX2-only CPUs, e.g. AMD Zen 3), eager bfloat16 runs
# ATen's reference convolution loops: c3d's bfloat16 forward on the test clip took 467 s there
# (float32: seconds). Those models' bfloat16 legs are left to CPUs with native bfloat16.
_BF16_NATIVE = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
_BF16_EMULATED_MAX_GMACS = 10.0


def test_registry_has_every_published_architecture():
    assert EXPECTED_MODELS <= set(ALL)
    assert ALL == sorted(ALL)


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ValueError) as info:
        zoo.get_model("r3d_19")
    message = str(info.value)
    assert "r3d_19" in message
    for name in ("r3d_18", "x3d_m", "slowfast_r50"):
        assert name in message


@pytest.mark.parametrize("name", ALL)
def test_parameter_count_matches_publication(name):
    spec = zoo.get_model_spec(name)
    params = count_params(zoo.get_model(name))
    if spec.published_params is None:
        pytest.skip(f"{name}: no published parameter count ({spec.params_source})")
    if spec.params_rtol == 0:
        assert params == spec.published_params
    else:
        assert abs(params - spec.published_params) <= spec.params_rtol * spec.published_params, (
            f"{name}: {params:,} parameters, published {spec.published_params:,} ({spec.params_source})"
        )


@pytest.mark.parametrize("name", ALL)
def test_num_classes_sets_the_head(name):
    model = zoo.get_model(name, num_classes=7).eval()
    spec = zoo.get_model_spec(name)
    x = torch.randn((2,) + spec.test_input_shape)
    with torch.no_grad():
        assert model(x).shape == (2, 7)


@pytest.mark.parametrize("name", ALL)
def test_forward_at_standard_clip(name):
    spec = zoo.get_model_spec(name)
    model = zoo.get_model(name).eval()
    x = torch.randn((1,) + spec.input_shape)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, spec.num_classes)
    assert torch.isfinite(y).all()


def _relative_error(y: torch.Tensor, reference: torch.Tensor) -> float:
    return ((y.double() - reference).norm() / reference.norm()).item()


@pytest.mark.parametrize("name", ALL)
def test_layouts_and_dtypes_agree_with_float64(name):
    """channels_last_3d and bfloat16 compute the same function as contiguous float32."""
    spec = zoo.get_model_spec(name)
    model = zoo.get_model(name).eval()
    randomise_batch_norm(model, seed=1)  # fresh BNs are the identity in eval mode
    x = torch.randn((2,) + spec.test_input_shape)
    with torch.no_grad():
        reference = model.double()(x.double())
        model.float()
        contiguous = model(x)
        channels_last = model.to(memory_format=torch.channels_last_3d)(
            x.contiguous(memory_format=torch.channels_last_3d)
        )
    assert reference.abs().max() > 0
    assert _relative_error(contiguous, reference) < 1e-5
    assert _relative_error(channels_last, reference) < 1e-5
    if not _BF16_NATIVE:
        gmacs = count_flops(model, (2,) + spec.test_input_shape).gmacs
        if gmacs > _BF16_EMULATED_MAX_GMACS:
            pytest.skip(f"bfloat16 leg: {gmacs:.0f} GMACs of eager bfloat16 on a CPU where oneDNN "
                        "has no bfloat16 convolution (ATen's reference loops, ~0.2 GMAC/s); "
                        "float32 in both layouts was checked")
    with torch.no_grad():
        bf16 = model.to(torch.bfloat16)(x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last_3d))
    assert bf16.dtype == torch.bfloat16
    # bfloat16 keeps 8 bits of mantissa (relative step 2**-8 = 0.4%); over tens of layers the
    # rounding errors add up like a random walk, a few percent at the logits.
    assert _relative_error(bf16, reference) < 0.06


@pytest.mark.parametrize("name", ALL)
def test_wrong_rank_is_rejected(name):
    spec = zoo.get_model_spec(name)
    model = zoo.get_model(name).eval()
    frames = torch.randn(spec.test_input_shape)  # no batch dimension: 4-D
    with pytest.raises(ValueError, match="5-D"):
        model(frames)


@pytest.mark.parametrize("name", ALL)
def test_wrong_channels_are_rejected(name):
    spec = zoo.get_model_spec(name)
    model = zoo.get_model(name).eval()
    c, t, h, w = spec.test_input_shape
    with pytest.raises(ValueError, match=f"expects {c} input channels"):
        model(torch.randn(1, c + 1, t, h, w))


@pytest.mark.parametrize("name", ALL)
def test_integer_clip_is_rejected(name):
    spec = zoo.get_model_spec(name)
    model = zoo.get_model(name).eval()
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros((1,) + spec.test_input_shape, dtype=torch.uint8))


@pytest.mark.parametrize("name", [n for n in ALL if zoo.get_model_spec(n).min_frames > 1])
def test_too_short_clip_is_rejected(name):
    spec = zoo.get_model_spec(name)
    model = zoo.get_model(name).eval()
    c, t, h, w = spec.test_input_shape
    with pytest.raises(ValueError, match="frames"):
        model(torch.randn(1, c, spec.min_frames - 1, h, w))
