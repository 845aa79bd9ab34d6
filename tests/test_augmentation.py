"""Video3DAugmentation: crops are the right slices, flips are torch.flip, seeds reproduce, errors."""

from __future__ import annotations

import pytest
import torch

from videoconv.train.augmentation import Video3DAugmentation


def _batch(n=4, c=3, t=10, h=20, w=24):
    # Every element distinct, so a slice is identified by its values.
    return torch.arange(n * c * t * h * w, dtype=torch.float32).view(n, c, t, h, w)


def _locate(x_clip, out_clip):
    """(t0, y0, x0, flipped) of out_clip inside x_clip, from the first element."""
    first = out_clip[0, 0, 0, 0]
    idx = (x_clip[0] == first).nonzero()
    assert idx.shape[0] == 1
    t0, y0, x0 = (int(v) for v in idx[0])
    return t0, y0, x0


def test_crops_are_slices_of_the_input_and_flips_are_torch_flip():
    x = _batch()
    aug = Video3DAugmentation(frames=6, size=(12, 16), flip_p=0.5)
    g = torch.Generator().manual_seed(3)
    out = aug(x, generator=g)
    assert out.shape == (4, 3, 6, 12, 16)
    flips = 0
    for i in range(x.shape[0]):
        o = out[i]
        # Unflipped: the first element is the crop's top-left; flipped: its top-right.
        t0, y0, xa = _locate(x[i], o)
        direct = x[i, :, t0:t0 + 6, y0:y0 + 12, xa:xa + 16]
        if direct.shape == o.shape and torch.equal(direct, o):
            continue
        x0 = xa - 15
        assert x0 >= 0
        crop = x[i, :, t0:t0 + 6, y0:y0 + 12, x0:x0 + 16]
        assert torch.equal(torch.flip(crop, dims=[-1]), o)
        flips += 1
    assert 0 <= flips <= 4
    # Bounds: all crops inside the input (slicing above would have produced a short tensor).


def test_every_window_position_reachable_and_in_bounds():
    x = _batch(n=256, c=1, t=5, h=6, w=6)
    aug = Video3DAugmentation(frames=3, size=4, flip_p=0.0)
    out = aug(x, generator=torch.Generator().manual_seed(0))
    starts = set()
    for i in range(x.shape[0]):
        t0, y0, x0 = _locate(x[i], out[i])
        assert 0 <= t0 <= 2 and 0 <= y0 <= 2 and 0 <= x0 <= 2
        assert torch.equal(out[i], x[i, :, t0:t0 + 3, y0:y0 + 4, x0:x0 + 4])
        starts.add((t0, y0, x0))
    assert len(starts) == 27  # every (t0, y0, x0) in 3 x 3 x 3 happens


def test_flip_probability_extremes():
    x = _batch(n=3, t=4, h=8, w=8)
    always = Video3DAugmentation(flip_p=1.0)(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(always, torch.flip(x, dims=[-1]))
    never = Video3DAugmentation(flip_p=0.0)(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(never, x)
    flips = Video3DAugmentation(flip_p=0.5)(_batch(n=400, c=1, t=1, h=1, w=2), generator=torch.Generator().manual_seed(1))
    share = (flips[:, 0, 0, 0, 0] == flips.new_tensor(1) + 2 * torch.arange(400)).float().mean()
    assert 0.4 < float(share) < 0.6


def test_same_seed_same_output_and_different_seed_differs():
    x = torch.randn(6, 3, 10, 20, 20)
    for aug in (Video3DAugmentation(frames=8, size=16), Video3DAugmentation(frames=8, size=16, scale=(0.3, 1.0))):
        a = aug(x, generator=torch.Generator().manual_seed(7))
        b = aug(x, generator=torch.Generator().manual_seed(7))
        c = aug(x, generator=torch.Generator().manual_seed(8))
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


def test_resized_crop_shape_dtype_and_full_scale_is_identity():
    x = torch.randn(3, 3, 6, 16, 16)
    aug = Video3DAugmentation(frames=4, size=8, scale=(0.2, 0.8), flip_p=0.5)
    out = aug(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 3, 4, 8, 8) and out.dtype == x.dtype
    # scale 1, ratio 1: the whole frame resampled onto the same grid is the frame itself.
    same = Video3DAugmentation(frames=6, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0)
    torch.testing.assert_close(same(x, generator=torch.Generator().manual_seed(0)), x, atol=1e-5, rtol=0)
    flipped = Video3DAugmentation(frames=6, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=1.0)
    torch.testing.assert_close(flipped(x, generator=torch.Generator().manual_seed(0)), torch.flip(x, dims=[-1]),
                               atol=1e-5, rtol=0)


def test_resized_crop_samples_inside_the_crop():
    # A horizontal ramp: every output value must come from within the frame's range.
    ramp = torch.linspace(0, 1, 32).view(1, 1, 1, 1, 32).expand(8, 1, 2, 32, 32).contiguous()
    out = Video3DAugmentation(size=16, scale=(0.1, 0.5))(ramp, generator=torch.Generator().manual_seed(0))
    assert out.min() >= 0 and out.max() <= 1
    # a crop of at most half the area spans at most ~0.71 * sqrt(4/3) of the width
    span = out.amax(dim=(1, 2, 3, 4)) - out.amin(dim=(1, 2, 3, 4))
    assert bool((span < 0.9).all())


def test_label_flip_map():
    x = _batch(n=8, t=2, h=4, w=4)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    aug = Video3DAugmentation(flip_p=0.5, label_flip_map=[1, 0, 2, 3])
    out, new = aug(x, labels, generator=torch.Generator().manual_seed(5))
    flipped = torch.tensor([not torch.equal(out[i], x[i]) for i in range(8)])
    assert flipped.any() and not flipped.all()
    expected = torch.where(flipped & (labels == 0), 1, torch.where(flipped & (labels == 1), 0, labels))
    assert torch.equal(new, expected)
    with pytest.raises(ValueError, match="label_flip_map is set but no labels"):
        aug(x)
    # without a map, labels pass through unchanged
    out2, same = Video3DAugmentation(flip_p=1.0)(x, labels)
    assert torch.equal(same, labels)


def test_eval_mode_is_center_crop():
    x = _batch(n=2, t=9, h=10, w=11)
    aug = Video3DAugmentation(frames=5, size=6).eval()
    assert torch.equal(aug(x), x[:, :, 2:7, 2:8, 2:8])


def test_channels_last_layout_kept():
    x = torch.randn(2, 3, 6, 10, 10).contiguous(memory_format=torch.channels_last_3d)
    out = Video3DAugmentation(frames=4, size=8)(x, generator=torch.Generator().manual_seed(0))
    assert out.is_contiguous(memory_format=torch.channels_last_3d)


def test_errors_name_actual_and_needed_sizes():
    aug = Video3DAugmentation(frames=8, size=16)
    with pytest.raises(ValueError, match=r"T=4 frames but the temporal crop needs frames=8"):
        aug(torch.zeros(1, 3, 4, 32, 32))
    with pytest.raises(ValueError, match=r"12x20 \(HxW\) but the spatial crop needs at least 16x16"):
        aug(torch.zeros(1, 3, 8, 12, 20))
    with pytest.raises(ValueError, match=r"5-D batch .* 4-D tensor"):
        aug(torch.zeros(3, 8, 32, 32))
    with pytest.raises(TypeError):
        aug([1, 2, 3])
    with pytest.raises(ValueError, match="flip_p"):
        Video3DAugmentation(flip_p=1.5)
    with pytest.raises(ValueError, match="scale"):
        Video3DAugmentation(scale=(0.5, 1.5))
    with pytest.raises(ValueError, match="frames"):
        Video3DAugmentation(frames=0)
    with pytest.raises(ValueError, match="size"):
        Video3DAugmentation(size=(0, 4))


@pytest.mark.cuda
def test_runs_on_gpu_with_a_cuda_generator():
    x = torch.randn(4, 3, 10, 20, 20, device="cuda")
    for aug in (Video3DAugmentation(frames=8, size=16), Video3DAugmentation(frames=8, size=16, scale=(0.3, 1.0))):
        a = aug(x, generator=torch.Generator(device="cuda").manual_seed(1))
        b = aug(x, generator=torch.Generator(device="cuda").manual_seed(1))
        assert a.device == x.device and torch.equal(a, b)
        cpu = aug(x.cpu(), generator=torch.Generator().manual_seed(1))
        assert cpu.shape == a.shape
