"""videoconv.train: stage checkpointing, the training step (AMP, accumulation), the run and CLI,
and DistributedDataParallel with gloo on 2 CPU processes."""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import videoconv.models as vm
from videoconv.train import (
    TrainConfig,
    TrainStep,
    checkpoint_stages,
    checkpointed_stages,
    run_training,
    stage_names,
    uncheckpoint_stages,
)
from videoconv.train import cli as train_cli
from videoconv.train import loop as train_loop
from videoconv.train.step import check_autocast_supported, resolve_amp_dtype

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The test machine's 2 cores are shared: with other processes busy, 2 OpenMP threads spin
    # against each other and these tests run ~8x slower than with 1.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyNet(nn.Module):
    """A BatchNorm-free video classifier (so micro-batching and sharding change nothing)."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(3, 4, 3, padding=1), nn.ReLU())
        self.stage = nn.Sequential(nn.Conv3d(4, 8, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.stage(self.stem(x))).flatten(1))


def tiny_datasets(n_train=16, n_val=8, num_classes=3, shape=(3, 4, 8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_train + n_val) % num_classes
    clips = torch.randn(n_train + n_val, *shape, generator=g) + labels.view(-1, 1, 1, 1, 1) * 0.5
    info = {"num_classes": num_classes, "clip_shape": list(shape), "epochs": 1, "batch_size": 4,
            "lr": 0.05, "weight_decay": 0.0, "momentum": 0.0, "optimizer": "sgd", "augment": False}
    return (TensorDataset(clips[:n_train], labels[:n_train]),
            TensorDataset(clips[n_train:], labels[n_train:]), info)


# -- checkpointing ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["r2plus1d_18", "slowfast_r50", "x3d_s", "r2plus1d_18-fused"])
def test_checkpoint_stages_same_outputs_gradients_and_bn_stats(name):
    fused = name.endswith("-fused")
    name = name.replace("-fused", "")
    spec = vm.get_model_spec(name)
    plain = vm.get_model(name, num_classes=5)
    if fused:  # videoconv.fuse keeps the module paths; its training-mode fused modules recompute too
        import videoconv

        plain = videoconv.fuse(plain)
    wrapped = copy.deepcopy(plain)
    keys = list(plain.state_dict())
    checkpoint_stages(wrapped)
    assert checkpointed_stages(wrapped) == stage_names(wrapped) and len(stage_names(wrapped)) >= 4
    assert list(wrapped.state_dict()) == keys  # the module tree is untouched
    x = torch.randn((2,) + spec.test_input_shape)
    torch.manual_seed(1)  # same dropout masks (x3d/slowfast heads)
    out_plain = plain(x)
    out_plain.square().mean().backward()
    torch.manual_seed(1)
    out_wrapped = wrapped(x)
    out_wrapped.square().mean().backward()
    torch.testing.assert_close(out_wrapped, out_plain, rtol=0, atol=0)
    for (n, p), q in zip(plain.named_parameters(), wrapped.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=0, msg=f"grad of {n}")
    # Recomputation in backward must not update BatchNorm running statistics a second time.
    for (n, b), c in zip(plain.named_buffers(), wrapped.buffers()):
        torch.testing.assert_close(c, b, rtol=0, atol=0, msg=f"buffer {n}")
    uncheckpoint_stages(wrapped)
    assert checkpointed_stages(wrapped) == []


def test_checkpoint_stage_names_of_the_zoo_and_unknown_stage_error():
    assert stage_names(vm.get_model("r3d_18", num_classes=2)) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert stage_names(vm.get_model("c2d_r18", num_classes=2)) == ["layer1", "layer2", "layer3", "layer4"]
    assert stage_names(vm.get_model("x3d_s", num_classes=2))[:5] == [f"blocks.{i}" for i in range(5)]
    model = vm.get_model("r2plus1d_18", num_classes=2)
    checkpoint_stages(model, "layer3,layer4")
    assert checkpointed_stages(model) == ["layer3", "layer4"]
    with pytest.raises(ValueError, match=r"unknown stage.*'layer9'.*valid stages: stem, layer1, layer2, layer3, layer4"):
        checkpoint_stages(model, ["layer1", "layer9"])


# -- training step ------------------------------------------------------------------------------


def _sgd(model, lr=0.1):
    return torch.optim.SGD(model.parameters(), lr=lr)


@pytest.mark.parametrize("bn_eval", [False, True])
def test_accumulation_equals_one_big_batch(bn_eval):
    if bn_eval:  # a zoo model with BatchNorm in eval mode
        model = vm.get_model("c2d_r18", num_classes=3)
        shape = vm.get_model_spec("c2d_r18").test_input_shape
    else:
        model, shape = TinyNet(), (3, 4, 8, 8)
    if bn_eval:
        model.eval()
    x, y = torch.randn((6,) + shape), torch.tensor([0, 1, 2, 0, 1, 2])
    big, small = copy.deepcopy(model), copy.deepcopy(model)
    step_big = TrainStep(big, _sgd(big))
    assert step_big(x, y).stepped
    step_small = TrainStep(small, _sgd(small), accumulation_steps=3)
    results = [step_small(x[i:i + 2], y[i:i + 2]) for i in (0, 2, 4)]
    assert [r.stepped for r in results] == [False, False, True]
    for (n, p), q in zip(big.named_parameters(), small.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=n)
    # A step forced after 2 of 4 micro-batches (the end of an epoch) uses their mean gradient.
    big2, small2 = copy.deepcopy(model), copy.deepcopy(model)
    TrainStep(big2, _sgd(big2))(x[:4], y[:4])
    s = TrainStep(small2, _sgd(small2), accumulation_steps=4)
    assert not s(x[:2], y[:2]).stepped and s(x[2:4], y[2:4], force_step=True).stepped
    for p, q in zip(big2.parameters(), small2.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)


def test_bfloat16_step_close_to_float32():
    model = TinyNet()
    x, y = torch.randn(4, 3, 4, 8, 8), torch.tensor([0, 1, 2, 0])
    m32, m16 = copy.deepcopy(model), copy.deepcopy(model)
    r32 = TrainStep(m32, _sgd(m32))(x, y)
    step = TrainStep(m16, _sgd(m16), amp="bfloat16")
    assert step.scaler is None and step.amp_dtype == torch.bfloat16
    r16 = step(x, y)
    assert torch.isfinite(torch.tensor(r16.loss)) and r16.stepped
    assert abs(r16.loss - r32.loss) < 0.02 * abs(r32.loss) + 1e-3
    assert all(torch.isfinite(p).all() for p in m16.parameters())
    for p, q in zip(m32.parameters(), m16.parameters()):
        torch.testing.assert_close(q, p, rtol=0.05, atol=2e-3)


def test_float16_uses_grad_scaler_and_skips_overflowing_steps():
    model = TinyNet()
    x, y = torch.randn(4, 3, 4, 8, 8), torch.tensor([0, 1, 2, 0])
    step = TrainStep(model, _sgd(model), amp="float16", max_grad_norm=10.0)
    assert isinstance(step.scaler, torch.amp.GradScaler) and step.amp_dtype == torch.float16
    before = [p.detach().clone() for p in model.parameters()]
    r = step(x, y)
    assert r.stepped and r.scale == 2.0**16 and torch.isfinite(torch.tensor(r.loss)) and r.grad_norm is not None
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))
    # An overflowing loss: the scaler skips the optimizer step and halves the scale.
    after = [p.detach().clone() for p in model.parameters()]
    step.loss_fn = lambda logits, t: F.cross_entropy(logits, t) * float("inf")
    r = step(x, y)
    assert not r.stepped and step.scaler.get_scale() == 2.0**15
    assert all(torch.equal(p, a) for p, a in zip(model.parameters(), after))


def test_amp_names_and_unsupported_autocast_error():
    assert resolve_amp_dtype("none") is None and resolve_amp_dtype("bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="amp must be one of"):
        resolve_amp_dtype("int8")
    with pytest.raises(ValueError, match="not supported on cpu"):
        check_autocast_supported("cpu", torch.float64)


# -- the run and the CLI ------------------------------------------------------------------------


def _parse(argv):
    parser = argparse.ArgumentParser(prog="videoconv")
    train_cli.add_train_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_end_to_end_json_plot_and_memory_report(tmp_path, monkeypatch, capsys):
    # Small clips for the zoo's x3d_s from a stand-in dataset (the data presets are tested with
    # the data module); everything else is the real `videoconv train` path. X3D's activations
    # outweigh its 3.8M parameters even on small clips, so checkpointing shows.
    monkeypatch.setattr(train_loop, "_load_datasets",
                        lambda config: tiny_datasets(n_train=8, n_val=4, shape=(3, 4, 64, 64)))
    out = tmp_path / "run.json"
    args = _parse(["train", "--model", "x3d_s", "--epochs", "2", "--batch-size", "2", "--accumulate", "2",
                   "--checkpoint-stages", "--report-memory", "--json", str(out), "--no-progress"])
    assert args.func(args) == 0
    report = json.loads(out.read_text())
    for key in ("val_acc", "num_classes", "loss_curve", "timings", "epochs", "memory", "hyperparameters"):
        assert key in report, key
    assert report["num_classes"] == 3 and 0.0 <= report["val_acc"] <= 1.0
    assert len(report["loss_curve"]) == 2 * report["steps_per_epoch"] == 8
    assert all(v == v and v < 1e4 for v in report["loss_curve"])
    assert len(report["train_acc_curve"]) == 8
    assert report["checkpoint_stages"] == [f"blocks.{i}" for i in range(6)]
    assert report["hyperparameters"]["accumulation_steps"] == 2
    for key in ("setup_s", "train_s", "eval_s", "total_s", "step_ms_mean"):
        assert report["timings"][key] > 0
    memory = report["memory"]
    assert memory["with_checkpointing"]["peak_bytes"] < memory["without_checkpointing"]["peak_bytes"]
    assert memory["reduction"] > 0.2 and memory["forward_backward_reduction"] > 0.2
    png = tmp_path / "run.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stdout = capsys.readouterr().out
    assert "peak memory of one training step" in stdout and "val_acc" in stdout


def test_run_with_augmentation_and_preset_hyperparameters():
    # The preset's augmentation crops (frames 3 of 4, 6x6 of 8x8); evaluation center-crops alike.
    config = TrainConfig(model="tiny", epochs=1, augment={"frames": 3, "size": 6, "flip_p": 0.5}, progress=False)
    report = run_training(config, model=TinyNet(), datasets=tiny_datasets())
    assert "Video3DAugmentation" in report["hyperparameters"]["augment"]
    assert report["val_samples"] == 8 and len(report["loss_curve"]) == 4
    data = pytest.importorskip("videoconv.data")
    _, _, info = data.make_datasets("synthetic-motion", preset="smoke")
    hp = train_loop.resolve_hyperparameters(TrainConfig(lr=0.5, accumulate=2), info)
    preset = data.PRESETS["smoke"]
    assert hp["lr"] == 0.5 and hp["accumulation_steps"] == 2
    for key in ("epochs", "batch_size", "weight_decay", "momentum", "optimizer", "warmup_epochs"):
        assert hp[key] == preset[key], key


def test_unknown_stage_from_the_cli(monkeypatch):
    monkeypatch.setattr(train_loop, "_load_datasets", lambda config: tiny_datasets(n_train=4, n_val=2))
    args = _parse(["train", "--model", "c2d_r18", "--checkpoint-stages", "stem", "--epochs", "0"])
    with pytest.raises(ValueError, match="valid stages: layer1, layer2, layer3, layer4"):
        args.func(args)


# -- DistributedDataParallel, gloo, 2 CPU processes -----------------------------------------------

_DDP_SCRIPT = """
import os, sys, torch
sys.path.insert(0, {tests!r})
from test_train import TinyNet, tiny_datasets
from videoconv.train import TrainConfig, run_training
torch.manual_seed(0)
model = TinyNet()
config = TrainConfig(model="tiny", epochs=2, batch_size=4, lr=0.1, optimizer="sgd", momentum=0.0,
                     weight_decay=0.0, json_path={json!r}, progress=False, seed=3)
report = run_training(config, model=model, datasets=tiny_datasets())  # trains `model` in place
torch.save({{"state": model.state_dict(), "report": report}}, os.path.join({out!r}, "rank%s.pt" % os.environ["RANK"]))
"""


def test_ddp_gloo_two_processes_match_single_process(tmp_path):
    json_path = tmp_path / "ddp.json"
    script = tmp_path / "ddp_run.py"
    script.write_text(_DDP_SCRIPT.format(tests=os.path.join(REPO, "tests"), json=str(json_path), out=str(tmp_path)))
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
        env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    saved = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    written = json.loads(json_path.read_text())  # rank 0 wrote it
    assert written["world_size"] == 2 and written["distributed_backend"] == "gloo"
    assert [r["rank"] for r in written["ranks"]] == [0, 1]
    assert all(r["samples_seen"] == 16 for r in written["ranks"])  # 2 epochs x 8 of 16 clips each
    assert saved[1]["report"]["ranks"] == saved[0]["report"]["ranks"] == written["ranks"]
    # Gradients were averaged: both ranks end with the same parameters ...
    for key, value in saved[0]["state"].items():
        torch.testing.assert_close(saved[1]["state"][key], value, rtol=0, atol=0, msg=key)
    # ... the ones one process ends with after training on the combined batches.
    config = TrainConfig(model="tiny", epochs=2, batch_size=4, lr=0.1, optimizer="sgd", momentum=0.0,
                         weight_decay=0.0, progress=False, seed=3)
    torch.manual_seed(0)
    model = TinyNet()
    initial = copy.deepcopy(model.state_dict())
    single = run_training(config, model=model, datasets=tiny_datasets())
    assert single["world_size"] == 1
    for key, value in model.state_dict().items():
        assert not torch.equal(value, initial[key])  # it trained
        torch.testing.assert_close(saved[0]["state"][key], value, rtol=1e-4, atol=1e-6, msg=key)
    torch.testing.assert_close(torch.tensor(written["loss_curve"]), torch.tensor(single["loss_curve"]),
                               rtol=1e-4, atol=1e-6)
    assert written["val_acc"] == pytest.approx(single["val_acc"])


def test_cli_under_torchrun_rank0_writes_json(tmp_path):
    pytest.importorskip("videoconv.data")
    json_path = tmp_path / "ddp_cli.json"
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "videoconv.train.cli", "--model", "c2d_r18", "--data", "synthetic-motion", "--preset", "smoke",
         "--epochs", "1", "--max-steps-per-epoch", "1", "--checkpoint-stages", "layer4", "--json", str(json_path)],
        env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(json_path.read_text())
    assert report["world_size"] == 2 and report["distributed_backend"] == "gloo"
    assert report["sync_batchnorm"]["used"] is False and "CUDA" in report["sync_batchnorm"]["reason"]
    assert [r["rank"] for r in report["ranks"]] == [0, 1]
    assert report["ranks"][0]["param_checksum"] == report["ranks"][1]["param_checksum"]
    assert report["checkpoint_stages"] == ["layer4"]
    assert report["num_classes"] == pytest.importorskip("videoconv.data").PRESETS["smoke"]["num_classes"]
    assert (tmp_path / "ddp_cli.png").exists()
    assert proc.stdout.count("val_acc") == 1  # only rank 0 prints the summary
