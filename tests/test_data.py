"""videoconv.data: SyntheticMotion (determinism, balance, splits, no class in frames), VideoFolder
(on tiny videos written with PyAV), presets / make_datasets, and every error path."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from videoconv.data import PRESETS, SyntheticMotion, VideoFolder, make_datasets
from videoconv.data.synthetic_motion import DIRECTIONS, item_seed
from videoconv.data.video_folder import VideoDecodeError

# ---------------------------------------------------------------------------------------------
# SyntheticMotion


def _stack(ds, indices):
    clips, labels = zip(*(ds[i] for i in indices))
    return torch.stack(clips), torch.tensor(labels)


def test_items_shape_dtype_labels_and_balance():
    ds = SyntheticMotion(num_samples=40, num_classes=4, frames=8, size=32, seed=0)
    assert len(ds) == 40 and ds.clip_shape == (3, 8, 32, 32)
    clips, labels = _stack(ds, range(40))
    assert clips.shape == (40, 3, 8, 32, 32) and clips.dtype == torch.float32
    assert isinstance(ds[0][1], int)
    assert labels.min() >= 0 and labels.max() < 4
    assert torch.bincount(labels, minlength=4).tolist() == [10, 10, 10, 10]
    assert ds.classes == ["right", "left", "down", "up"]
    assert torch.isfinite(clips).all()
    # roughly zero-mean, unit-variance
    assert abs(float(clips.mean())) < 0.2 and 0.7 < float(clips.std()) < 1.3


def test_deterministic_per_item_and_independent_of_order():
    a = SyntheticMotion(20, seed=5, split="train")
    b = SyntheticMotion(20, seed=5, split="train")
    for i in (0, 7, 19):
        assert torch.equal(a[i][0], b[i][0]) and a[i][1] == b[i][1]
    assert torch.equal(a[3][0], a[3][0])  # again, after other items
    # the clip depends only on (seed, split, index), not on the dataset's length
    assert torch.equal(SyntheticMotion(100, seed=5)[7][0], a[7][0])
    assert torch.equal(a[-1][0], a[19][0])
    # cache/materialize give the same clips
    c = SyntheticMotion(20, seed=5, cache=True).materialize()
    assert torch.equal(c[4][0], a[4][0])
    assert not torch.equal(SyntheticMotion(20, seed=6)[7][0], a[7][0])


def test_splits_and_seeds_are_disjoint():
    train = SyntheticMotion(64, seed=0, split="train")
    val = SyntheticMotion(64, seed=0, split="val")
    other = SyntheticMotion(64, seed=1, split="train")
    key = lambda clip: tuple(clip.flatten()[:16].tolist())  # noqa: E731
    train_keys = {key(train[i][0]) for i in range(64)}
    assert len(train_keys) == 64
    assert train_keys.isdisjoint(key(val[i][0]) for i in range(64))
    assert train_keys.isdisjoint(key(other[i][0]) for i in range(64))
    seeds = {item_seed(s, sp, i) for s in range(3) for sp in ("train", "val", "test") for i in range(200)}
    assert len(seeds) == 3 * 3 * 200


# -- the class is in the motion only -------------------------------------------------------------


def _nearest_centroid_accuracy(features_train, y_train, features_test, y_test, k):
    mu, sd = features_train.mean(0), features_train.std(0) + 1e-6
    ftr, fte = (features_train - mu) / sd, (features_test - mu) / sd
    centroids = torch.stack([ftr[y_train == c].mean(0) for c in range(k)])
    predicted = torch.cdist(fte, centroids).argmin(1)
    return float((predicted == y_test).float().mean())


def _motion_scores(clips, speeds, directions):
    """(N, K): mean correlation of frame t+1 with frame t shifted by each direction's step."""
    x = clips - clips.mean(dim=(2, 3, 4), keepdim=True)
    scores = []
    for dy, dx in directions:
        best = None
        for v in speeds:
            shifted = torch.roll(x[:, :, :-1], shifts=(dy * v, dx * v), dims=(3, 4))
            s = (shifted * x[:, :, 1:]).mean(dim=(1, 2, 3, 4))
            best = s if best is None else torch.maximum(best, s)
        scores.append(best)
    return torch.stack(scores, 1)


@pytest.fixture(scope="module")
def motion_sample():
    ds = SyntheticMotion(480, num_classes=4, frames=8, size=32, seed=11, speed=(1, 2))
    clips, labels = _stack(ds, range(480))
    return ds, clips, labels


def test_single_frames_and_time_average_do_not_reveal_the_class(motion_sample):
    ds, clips, labels = motion_sample
    k, chance = ds.num_classes, 1.0 / ds.num_classes
    tr, te = slice(0, 320), slice(320, 480)
    views = {
        "time-averaged clip": clips.mean(2).flatten(1),
        "first frame": clips[:, :, 0].flatten(1),
        "middle frame": clips[:, :, 4].flatten(1),
        # order-free summary statistics of the whole clip
        "per-channel mean/std/min/max": torch.cat(
            [clips.mean((2, 3, 4)), clips.std((2, 3, 4)), clips.amin((2, 3, 4)), clips.amax((2, 3, 4))], 1),
    }
    for name, feats in views.items():
        acc = _nearest_centroid_accuracy(feats[tr], labels[tr], feats[te], labels[te], k)
        assert acc < chance + 0.12, f"{name}: nearest-centroid accuracy {acc:.2f} (chance {chance:.2f})"


def test_motion_feature_separates_the_classes_but_not_on_shuffled_frames(motion_sample):
    ds, clips, labels = motion_sample
    directions = [d for _, d in DIRECTIONS[: ds.num_classes]]
    predicted = _motion_scores(clips, (1, 2), directions).argmax(1)
    assert float((predicted == labels).float().mean()) > 0.95
    # The same frames in a random order: the direction is gone. (The axis, horizontal or
    # vertical, is an order-free property of the frames and stays visible; the sign, which
    # tells right from left and down from up, is not: compare within each pair.)
    g = torch.Generator().manual_seed(0)
    shuffled = torch.stack([c[:, torch.randperm(c.shape[1], generator=g)] for c in clips])
    pair = labels - labels % 2
    for x, low, high in ((clips, 0.95, 1.01), (shuffled, 0.0, 0.62)):
        scores = _motion_scores(x, (1, 2), directions)
        sign = (scores.gather(1, (pair + 1)[:, None]) > scores.gather(1, pair[:, None]))[:, 0].long()
        acc = float(((pair + sign) == labels).float().mean())
        assert low <= acc < high, acc
    # played backwards, every clip reads as the opposite direction (pairs 0<->1, 2<->3)
    reversed_pred = _motion_scores(clips.flip(2), (1, 2), directions).argmax(1)
    assert float((reversed_pred == (labels ^ 1)).float().mean()) > 0.95


def test_right_vs_left_is_invisible_to_order_free_views():
    # With 2 classes (the smoke preset) a clip played backwards is an equally likely clip of the
    # other class, so nothing computed from the unordered frames separates them. Per pixel, the
    # sorted values over time (the whole multiset of frames, pixel by pixel) and the time
    # average: nearest-centroid at chance; the motion feature: ~perfect.
    ds = SyntheticMotion(400, num_classes=2, frames=8, size=32, seed=4)
    clips, labels = _stack(ds, range(400))
    tr, te = slice(0, 280), slice(280, 400)
    for name, feats in (("sorted over time", clips.sort(dim=2).values.flatten(1)),
                        ("time average", clips.mean(2).flatten(1)),
                        ("frame-wise mean/std", torch.cat([clips.mean((3, 4)), clips.std((3, 4))], 1)
                         .sort(dim=2).values.flatten(1))):
        acc = _nearest_centroid_accuracy(feats[tr], labels[tr], feats[te], labels[te], 2)
        assert acc < 0.5 + 0.15, f"{name}: {acc:.2f}"
    predicted = _motion_scores(clips, (2,), [d for _, d in DIRECTIONS[:2]]).argmax(1)
    assert float((predicted == labels).float().mean()) > 0.95


def test_positions_are_class_independent():
    # Where the moving pixels are, averaged over clips: flat for every class (wrap-around motion
    # from uniform starts); no side of the frame is favoured by any direction.
    ds = SyntheticMotion(400, num_classes=4, frames=8, size=32, seed=3, noise=0.0)
    clips, labels = _stack(ds, range(400))
    moving = (clips[:, :, 1:] - clips[:, :, :-1]).abs().sum(1).gt(1e-4).float().mean(1)  # (N, H, W)
    for c in range(4):
        m = moving[labels == c].mean(0)
        halves = [m[:16].mean(), m[16:].mean(), m[:, :16].mean(), m[:, 16:].mean()]
        assert max(halves) - min(halves) < 0.25 * float(m.mean()), f"class {c}: {halves}"


def test_hflip_label_map_matches_the_mirrored_motion():
    ds = SyntheticMotion(64, num_classes=8, frames=6, size=32, seed=2)
    mapping = ds.hflip_label_map()
    assert mapping == [1, 0, 2, 3, 6, 7, 4, 5]
    clips, labels = _stack(ds, range(64))
    directions = [d for _, d in DIRECTIONS]
    mirrored = _motion_scores(clips.flip(-1), (2,), directions).argmax(1)
    assert torch.equal(mirrored, torch.tensor(mapping)[labels])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_samples=0), "num_samples must be >= 1"),
        (dict(num_classes=3), r"num_classes must be one of \(2, 4, 8\)"),
        (dict(frames=2), "frames must be >= 3 for the motion to be visible"),
        (dict(size=8), "size must be >= 16"),
        (dict(seed=-1), "seed must be >= 0"),
        (dict(split="holdout"), "split must be one of"),
        (dict(speed=0), "speed must be >= 1"),
        (dict(speed=5, frames=8, size=32), r"too fast .* speed \* \(frames - 1\) < size"),
        (dict(speed=(1, 9), frames=3, size=16), r"need speed < size / 2"),
        (dict(speed=(3, 1)), "min <= max"),
        (dict(num_objects=0), "num_objects must be >= 1"),
        (dict(object_size=2), r"object_size must lie in \[3, size // 2"),
        (dict(noise=-1.0), "noise must be a finite number >= 0"),
        (dict(background_contrast=float("nan")), "background_contrast"),
    ],
)
def test_bad_arguments_raise_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticMotion(**kwargs)


def test_bad_types_and_indices():
    with pytest.raises(TypeError, match="frames must be an int"):
        SyntheticMotion(frames=8.0)
    with pytest.raises(TypeError, match="num_objects"):
        SyntheticMotion(num_objects="many")
    ds = SyntheticMotion(5)
    with pytest.raises(IndexError, match="out of range"):
        ds[5]
    with pytest.raises(IndexError):
        ds[-6]


# ---------------------------------------------------------------------------------------------
# VideoFolder


def _write_video(path, n_frames, level_of=lambda i: 20 * i, h=32, w=40):
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=12)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(n_frames):
            img = np.full((h, w, 3), level_of(i), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def video_root(tmp_path_factory):
    """root/<class>/<video>: 2 classes x 2 videos of 12 frames (32x40), brightness = 20 * frame."""
    pytest.importorskip("av")
    root = tmp_path_factory.mktemp("videos")
    for cls in ("walk", "jump"):
        (root / cls).mkdir()
        for j in range(2):
            _write_video(root / cls / f"v_{cls}_g0{j + 1}.avi", 12)
    (root / "jump" / "notes.txt").write_text("not a video")
    return root


def test_video_folder_items(video_root):
    ds = VideoFolder(video_root, frames=4, size=16, normalize=False)
    assert ds.classes == ["jump", "walk"] and len(ds) == 4
    assert ds.targets == [0, 0, 1, 1]
    clip, label = ds[2]
    assert clip.shape == (3, 4, 16, 16) and clip.dtype == torch.float32 and label == 1
    assert ds.clip_shape == (3, 4, 16, 16)
    # uniform sampling of 4 out of 12 frames picks frames 1, 4, 7, 10: brightness 20, 80, 140, 200
    levels = clip.mean(dim=(0, 2, 3)) * 255
    torch.testing.assert_close(levels, torch.tensor([20.0, 80.0, 140.0, 200.0]), atol=6, rtol=0)
    normalized, _ = VideoFolder(video_root, frames=4, size=16)[2]
    assert not torch.allclose(normalized, clip)


def test_video_folder_sampling_and_sizes(video_root):
    ds = VideoFolder(video_root, frames=4, size=(20, 24), sampling="random", frame_stride=2)
    assert ds[0][0].shape == (3, 4, 20, 24)
    starts = set()
    for _ in range(40):
        idx = ds.frame_indices(12)
        assert idx[0] >= 0 and idx[-1] <= 11 and all(b - a == 2 for a, b in zip(idx, idx[1:]))
        starts.add(idx[0])
    assert starts == {0, 1, 2, 3, 4, 5}
    center = VideoFolder(video_root, frames=4, size=16, sampling="center", frame_stride=2)
    assert center.frame_indices(12) == [2, 4, 6, 8]
    assert VideoFolder(video_root, frames=4, size=16, resize=20)[0][0].shape == (3, 4, 16, 16)


def test_video_folder_splits(video_root, tmp_path):
    train = VideoFolder(video_root, frames=4, size=16, split="train")
    val = VideoFolder(video_root, frames=4, size=16, split="val")
    assert len(train) == 2 and len(val) == 2
    assert {p for p, _ in train.samples}.isdisjoint(p for p, _ in val.samples)
    assert sorted(val.targets) == [0, 1]
    # explicit root/train and root/val folders; classes from both, so labels agree
    for split, classes in (("train", ("a", "b")), ("val", ("b",))):
        for cls in classes:
            (tmp_path / split / cls).mkdir(parents=True)
            _write_video(tmp_path / split / cls / "x.avi", 6)
    tr = VideoFolder(tmp_path, frames=4, size=16, split="train")
    va = VideoFolder(tmp_path, frames=4, size=16, split="val")
    assert tr.classes == va.classes == ["a", "b"] and va.targets == [1]
    with pytest.raises(FileNotFoundError, match="split 'test' needs a folder"):
        VideoFolder(video_root, frames=4, size=16, split="test")


def test_video_folder_errors(video_root, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VideoFolder(tmp_path / "missing", frames=4, size=16)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        VideoFolder(empty, frames=4, size=16)
    (empty / "cls").mkdir()
    (empty / "cls" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no videos found"):
        VideoFolder(empty, frames=4, size=16)
    # a file that is not a video
    broken = tmp_path / "broken"
    (broken / "cls").mkdir(parents=True)
    (broken / "cls" / "bad.mp4").write_bytes(b"this is not an mp4 file" * 10)
    with pytest.raises(VideoDecodeError, match="cannot read video .*bad.mp4"):
        VideoFolder(broken, frames=4, size=16)[0]
    # too few frames: says what the video has and what is needed
    with pytest.raises(ValueError, match=r"has 12 frame\(s\) but 20 are needed"):
        VideoFolder(video_root, frames=20, size=16)[0]
    with pytest.raises(ValueError, match=r"has 12 frame\(s\) but 13 are needed .*5 frames 3 apart"):
        VideoFolder(video_root, frames=5, size=16, sampling="center", frame_stride=3)[0]
    # bad arguments
    for kwargs, match in ((dict(frames=0), "frames"), (dict(size=0), "size"), (dict(sampling="every"), "sampling"),
                          (dict(frame_stride=0), "frame_stride"), (dict(split="dev"), "split"),
                          (dict(resize=8), "resize"), (dict(val_fraction=1.0), "val_fraction")):
        with pytest.raises(ValueError, match=match):
            VideoFolder(video_root, **{"frames": 4, "size": 16, **kwargs})
    # PyAV missing: a clear hint
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(ImportError, match="pip install av"):
        VideoFolder(video_root, frames=4, size=16)[0]


# ---------------------------------------------------------------------------------------------
# presets / make_datasets


def test_make_datasets_synthetic_smoke():
    train, val, info = make_datasets("synthetic-motion", preset="smoke", seed=0)
    p = PRESETS["smoke"]
    assert len(train) == p["num_train"] and len(val) == p["num_val"]
    assert info["num_classes"] == p["num_classes"] == len(info["classes"])
    assert info["clip_shape"] == (3, p["frames"], p["size"], p["size"]) == tuple(train[0][0].shape)
    for key in ("epochs", "batch_size", "lr", "weight_decay", "momentum", "optimizer"):
        assert info[key] == p[key] == info["hyperparameters"][key]
    assert not info["augment"]  # flips would turn "right" into "left"
    assert not torch.equal(train[0][0], val[0][0])
    # the same seed gives the same data, another seed other data
    assert torch.equal(make_datasets("synthetic-motion", seed=0)[1][3][0], val[3][0])
    assert not torch.equal(make_datasets("synthetic-motion", seed=1)[1][3][0], val[3][0])


def test_make_datasets_folder(video_root):
    train, val, info = make_datasets("folder", preset="smoke", root=str(video_root))
    assert info["num_classes"] == 2 and info["classes"] == ["jump", "walk"]
    assert len(train) + len(val) == 4
    f = PRESETS["smoke"]["folder"]
    assert val[0][0].shape == info["clip_shape"] == (3, 8, 32, 32)
    assert train[0][0].shape == (3, 8, f["resize"], f["resize"])  # cropped by the augmentation
    assert info["augment"] == f["augment"]
    # a path works as data too
    assert make_datasets(str(video_root))[2]["num_classes"] == 2


def test_make_datasets_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown preset 'huge': valid presets are 'smoke', 'full'"):
        make_datasets("synthetic-motion", preset="huge")
    with pytest.raises(ValueError, match=r"unknown data 'kinetics'.*'synthetic-motion', 'folder'"):
        make_datasets("kinetics")
    with pytest.raises(ValueError, match="needs root="):
        make_datasets("folder")
