"""The training run behind ``videoconv train``: data, model, optimizer, epochs, evaluation, report.

:func:`run_training` takes a :class:`TrainConfig` (the CLI's options; ``None`` fields take the
data preset's hyperparameters) and returns the report that ``--json`` writes:

``val_acc``, ``val_loss``, ``num_classes``, ``chance_acc``, ``train_acc``, ``train_loss``,
``loss_curve`` (the training loss of every micro-batch, averaged over ranks), ``steps_per_epoch``,
``epochs`` (per epoch: train/val loss and accuracy, learning rate, seconds), ``timings``
(``setup_s``, ``train_s``, ``eval_s``, ``data_s`` spent waiting for batches, ``total_s``,
``step_ms_mean``, ``samples_per_s``), ``hyperparameters``, ``memory`` (with ``--report-memory``),
``ranks`` (per process: samples seen and a parameter checksum), ``environment``.

Distributed training
--------------------
When ``WORLD_SIZE`` > 1 (``torchrun --nproc_per_node N -m videoconv train ...``) each process calls
``torch.distributed.init_process_group`` (``nccl`` on GPU, ``gloo`` on CPU; the ``env://``
rendezvous torchrun sets up), trains on its :class:`~torch.utils.data.DistributedSampler` shard
of every epoch and wraps the model in :class:`~torch.nn.parallel.DistributedDataParallel`, which
averages the gradients. ``batch_size`` is the *global* batch of one micro-step, split evenly
between the processes, so a preset's hyperparameters mean the same on any number of processes.
The samples of global batch ``i`` are the same as in a single-process run with the same seed
(both draw the DistributedSampler permutation). Only rank 0 shows progress and writes the JSON
and the plot; validation is sharded and its counts are summed over the ranks.

BatchNorm: on GPU the model's BatchNorms become :class:`~torch.nn.SyncBatchNorm` (statistics over
the global batch). torch 2.13's SyncBatchNorm runs only on CUDA/XPU/HPU devices (its forward
raises for CPU tensors), so with gloo on CPU the plain BatchNorm stays: each process normalises
with the statistics of its own shard of the batch, and DDP broadcasts rank 0's running
statistics at every forward (``broadcast_buffers``), so all ranks evaluate with the same ones.

Peak memory (``report_memory``)
-------------------------------
:func:`measure_step_memory` runs one warm-up training step (so gradients and optimizer state
exist) and then measures one more, for the model as is and with every stage checkpointed. On
CUDA it is ``torch.cuda.max_memory_allocated()`` minus the memory allocated when the step
starts. On CPU there is no allocator statistic, so the step runs under
``torch.profiler.profile(profile_memory=True)``, which records every allocation and free of
torch's CPU allocator with its size and time; summing them in time order gives the memory in
use after each event and its maximum is the peak above the starting point. Both count what the
step allocates on top of the model (activations kept for backward, gradients, temporaries);
oneDNN's own scratch buffers, when it does not take them from torch's allocator, are not seen.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import platform
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpointing import checkpoint_stages, checkpointed_stages, stage_names, uncheckpoint_stages
from .step import TrainStep, autocast, resolve_amp_dtype

__all__ = [
    "TrainConfig",
    "DistributedContext",
    "run_training",
    "setup_distributed",
    "cleanup_distributed",
    "evaluate",
    "make_optimizer",
    "make_scheduler",
    "measure_step_memory",
    "format_memory_report",
    "peak_memory_of",
    "plot_training_curves",
    "has_batchnorm",
    "resolve_hyperparameters",
]


@dataclasses.dataclass
class TrainConfig:
    """Options of a run; ``None`` takes the data preset's value (or the default noted)."""

    model: str = "r2plus1d_18"
    data: str = "synthetic-motion"
    preset: str = "smoke"
    root: Optional[str] = None
    epochs: Optional[int] = None
    batch_size: Optional[int] = None  # global batch per micro-step (split over DDP ranks)
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    momentum: Optional[float] = None
    optimizer: Optional[str] = None  # "sgd" | "adamw" | "adam"
    scheduler: Optional[str] = None  # "cosine" (default) | "constant"
    warmup_epochs: Optional[float] = None
    augment: Optional[bool] = None
    amp: Optional[str] = None  # "none" | "float16" | "bfloat16"; None: the preset's (else none)
    accumulate: int = 1
    max_grad_norm: Optional[float] = None
    checkpoint_stages: Optional[Union[str, Sequence[str]]] = None  # None: off; "all" or names
    fuse: bool = False
    report_memory: bool = False
    json_path: Optional[str] = None
    plot_path: Optional[str] = None
    plot_with: Sequence[str] = ()
    seed: int = 0
    device: Optional[str] = None
    progress: bool = True
    num_workers: Optional[int] = None
    threads: Optional[int] = None  # torch.set_num_threads for this process
    max_steps_per_epoch: Optional[int] = None  # for quick experiments and tests


# ---------------------------------------------------------------------------------------------
# distributed


@dataclasses.dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None
    device: torch.device = torch.device("cpu")
    #: whether this module initialised the process group (and so destroys it at the end).
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: Optional[str] = None) -> DistributedContext:
    """Read torchrun's environment; initialise the process group when ``WORLD_SIZE`` > 1."""
    import torch.distributed as dist

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1)) if world_size > 1 else torch.device("cuda", torch.cuda.current_device())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    ctx = DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)
    if world_size > 1:
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch has no torch.distributed")
        ctx.backend = "nccl" if dev.type == "cuda" else "gloo"
        if dist.is_initialized():
            ctx.backend = dist.get_backend()
            ctx.rank, ctx.world_size = dist.get_rank(), dist.get_world_size()
        else:
            dist.init_process_group(backend=ctx.backend, rank=rank, world_size=world_size)
            ctx.owns_group = True
    return ctx


def cleanup_distributed(ctx: DistributedContext) -> None:
    import torch.distributed as dist

    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def _all_reduce_sum(ctx: DistributedContext, values: Sequence[float]) -> List[float]:
    if not ctx.enabled:
        return list(values)
    import torch.distributed as dist

    t = torch.tensor(list(values), dtype=torch.float64, device=ctx.device if ctx.backend == "nccl" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def _all_gather_object(ctx: DistributedContext, obj: Any) -> List[Any]:
    if not ctx.enabled:
        return [obj]
    import torch.distributed as dist

    out: List[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def _barrier(ctx: DistributedContext) -> None:
    if ctx.enabled:
        import torch.distributed as dist

        dist.barrier()


def _broadcast_buffers(ctx: DistributedContext, model: nn.Module) -> None:
    if ctx.enabled:
        import torch.distributed as dist

        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


# ---------------------------------------------------------------------------------------------
# pieces


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _get(info: Any, key: str, default: Any = None) -> Any:
    """``info[key]`` / ``info.key`` / ``info.hyperparameters[key]``, else ``default``."""
    for source in (info, getattr(info, "hyperparameters", None) if not isinstance(info, dict) else info.get("hyperparameters")):
        if source is None:
            continue
        if isinstance(source, dict):
            if source.get(key) is not None:
                return source[key]
        elif getattr(source, key, None) is not None:
            return getattr(source, key)
    return default


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float = 0.0, momentum: float = 0.9):
    """SGD (Nesterov momentum), AdamW or Adam; no weight decay on biases and norm parameters."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    name = name.lower()
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; use sgd, adamw or adam")


def make_scheduler(optimizer, kind: str, total_steps: int, warmup_steps: int = 0):
    """Per-optimizer-step LR multiplier: linear warm-up, then cosine to 0 or constant."""
    kind = (kind or "cosine").lower()
    if kind not in ("cosine", "constant"):
        raise ValueError(f"unknown LR schedule {kind!r}; use cosine or constant")
    total_steps = max(int(total_steps), 1)
    warmup_steps = max(int(warmup_steps), 0)

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _load_augmentation(spec: Any):
    """A Video3DAugmentation from the preset's ``augment``: an instance, a dict of its arguments,
    or True (its defaults); None/False: no augmentation."""
    if spec is None or spec is False:
        return None
    from .augmentation import Video3DAugmentation

    if isinstance(spec, nn.Module):
        return spec
    if isinstance(spec, dict):
        return Video3DAugmentation(**spec)
    if spec is True:
        return Video3DAugmentation()
    raise ValueError(f"cannot make an augmentation from {spec!r}")


def _apply_augmentation(aug, clips: torch.Tensor, labels: torch.Tensor, generator: torch.Generator):
    """(clips, labels) after ``aug`` (labels change only where a flip mirrors the class)."""
    out = aug(clips, labels, generator=generator)
    if isinstance(out, tuple):
        return out
    return out, labels


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp_dtype=None, ctx: Optional[DistributedContext] = None,
             transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
    """(mean loss, accuracy, samples) over ``loader``, summed over the ranks under DDP.

    ``transform`` (the training augmentation in eval mode: center crops) is applied to each
    batch first, so the model sees clips of the size it was trained on."""
    was_training = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for clips, labels in loader:
        clips = clips.to(device, non_blocking=True)
        labels = torch.as_tensor(labels).to(device, non_blocking=True)
        if transform is not None:
            clips = transform(clips)
        with autocast(device.type, amp_dtype):
            logits = model(clips)
        loss_sum += float(F.cross_entropy(logits.float(), labels, reduction="sum"))
        correct += int((logits.argmax(1) == labels).sum())
        count += int(labels.shape[0])
    model.train(was_training)
    if ctx is not None and ctx.enabled:
        loss_sum, correct, count = _all_reduce_sum(ctx, [loss_sum, correct, count])
    count = int(count)
    return loss_sum / max(count, 1), correct / max(count, 1), count


# ---------------------------------------------------------------------------------------------
# memory


def peak_memory_of(fn: Callable[[], Any], device: torch.device) -> Tuple[int, str]:
    """(peak bytes allocated while ``fn()`` runs, above what was allocated before; method).

    The benchmark suite's measurement (:func:`videoconv.bench.timing.peak_memory_bytes`), so a
    training report and a ``videoconv bench --mode train`` row count memory the same way."""
    from ..bench.timing import peak_memory_bytes

    method = ("torch.cuda.max_memory_allocated" if device.type == "cuda" else
              "torch.profiler allocation and free events (profile_memory=True), summed in time order")
    return int(peak_memory_bytes(fn, device)), method


def measure_step_memory(
    model: nn.Module,
    clips: torch.Tensor,
    labels: torch.Tensor,
    *,
    stages: Union[None, str, Sequence[str]] = "all",
    amp: Optional[str] = None,
    optimizer: str = "sgd",
) -> Dict[str, Any]:
    """Peak memory of one training step of ``model`` on this batch, with and without
    checkpointing ``stages``. ``model`` is not modified (copies are trained).

    Two figures for each: ``peak_bytes``, the whole step (forward, backward, optimizer update),
    and ``forward_backward_peak_bytes``, forward and backward only: the part checkpointing
    changes. On small clips the whole step's peak can be the optimizer update (all gradients
    plus the update's temporaries, about twice the parameters' size), which checkpointing
    cannot lower; on real clips the activations kept for backward dominate.
    """
    device = clips.device
    amp_dtype = resolve_amp_dtype(amp)
    report: Dict[str, Any] = {"batch_shape": list(clips.shape), "device": str(device), "amp": amp or "none",
                              "params_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}
    for label, ck in (("without_checkpointing", None), ("with_checkpointing", stages)):
        m = copy.deepcopy(model)
        uncheckpoint_stages(m)
        if ck is not None:
            checkpoint_stages(m, ck)
        m.train()
        opt = make_optimizer(m, optimizer, lr=1e-6)
        step = TrainStep(m, opt, amp=amp_dtype, device_type=device.type)
        step(clips, labels)  # warm-up: the optimizer state's first allocation
        peak, method = peak_memory_of(lambda s=step: s(clips, labels), device)

        def forward_backward(m=m):
            with autocast(device.type, amp_dtype):
                loss = F.cross_entropy(m(clips), labels)
            loss.backward()

        fb_peak, _ = peak_memory_of(forward_backward, device)
        opt.zero_grad(set_to_none=True)
        report[label] = {
            "peak_bytes": peak,
            "peak_mib": round(peak / 2**20, 2),
            "forward_backward_peak_bytes": fb_peak,
            "forward_backward_peak_mib": round(fb_peak / 2**20, 2),
        }
        report["method"] = method
        if ck is not None:
            report["stages"] = checkpointed_stages(m)
        del m, opt, step
    for key, name in (("peak_bytes", "reduction"), ("forward_backward_peak_bytes", "forward_backward_reduction")):
        without = report["without_checkpointing"][key]
        with_ = report["with_checkpointing"][key]
        report[name] = round(1.0 - with_ / without, 4) if without else None
    return report


def format_memory_report(memory: Dict[str, Any], model_name: str = "model") -> str:
    w, c = memory["without_checkpointing"], memory["with_checkpointing"]
    stages = memory.get("stages") or []
    return (
        f"peak memory of one training step ({model_name}, batch {tuple(memory['batch_shape'])}, "
        f"{memory['device']}, amp {memory['amp']}; parameters {memory['params_bytes'] / 2**20:.1f} MiB):\n"
        f"  checkpointing off:  step {w['peak_mib']:8.1f} MiB   forward+backward {w['forward_backward_peak_mib']:8.1f} MiB\n"
        f"  checkpointing on:   step {c['peak_mib']:8.1f} MiB   forward+backward {c['forward_backward_peak_mib']:8.1f} MiB"
        f"   ({len(stages)} stages: {', '.join(stages)})\n"
        f"  reduction:          step {100 * (memory['reduction'] or 0):7.1f} %     forward+backward "
        f"{100 * (memory['forward_backward_reduction'] or 0):7.1f} %\n"
        f"  measured with {memory['method']}"
    )


# ---------------------------------------------------------------------------------------------
# plot


def plot_training_curves(results: Union[Dict[str, Any], Sequence[Dict[str, Any]]], path: str) -> str:
    """PNG of training loss (per step, smoothed) and train/val accuracy per epoch of one or more
    runs (the dicts :func:`run_training` returns / ``--json`` writes). Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(results, dict):
        results = [results]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    chance = None
    max_epoch = 0
    for i, r in enumerate(results):
        color = colors[i % len(colors)]
        label = r.get("model", f"run {i}")
        curve = r.get("loss_curve") or []
        spe = max(r.get("steps_per_epoch") or len(curve) or 1, 1)
        if curve:
            xs = [(k + 1) / spe for k in range(len(curve))]
            ax_loss.plot(xs, curve, color=color, alpha=0.25, linewidth=0.8)
            window = max(1, min(len(curve) // 10, spe))
            smooth = [sum(curve[max(0, k - window + 1): k + 1]) / len(curve[max(0, k - window + 1): k + 1])
                      for k in range(len(curve))]
            ax_loss.plot(xs, smooth, color=color, label=f"{label} (train loss)")
        acc_curve = r.get("train_acc_curve") or []
        if acc_curve:
            xs = [(k + 1) / spe for k in range(len(acc_curve))]
            window = max(1, min(len(acc_curve) // 10, spe))
            smooth = [sum(acc_curve[max(0, k - window + 1): k + 1]) / len(acc_curve[max(0, k - window + 1): k + 1])
                      for k in range(len(acc_curve))]
            ax_acc.plot(xs, smooth, color=color, alpha=0.7, label=f"{label} train (running mean)")
        epochs = r.get("epochs") or []
        if epochs:
            ex = [e["epoch"] for e in epochs]
            max_epoch = max(max_epoch, ex[-1])
            ax_loss.plot(ex, [e["val_loss"] for e in epochs], "o--", color=color, markersize=4,
                         label=f"{label} (val loss)")
            if not acc_curve:
                ax_acc.plot(ex, [e["train_acc"] for e in epochs], "-", color=color, alpha=0.6,
                            label=f"{label} train")
            ax_acc.plot(ex, [e["val_acc"] for e in epochs], "o-", color=color, markersize=6,
                        label=f"{label} val (final {r.get('val_acc', float('nan')):.3f})")
        chance = r.get("chance_acc", chance)
    if chance is not None:
        ax_acc.axhline(chance, color="gray", linestyle=":", label=f"chance ({chance:.2f})")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.set_title("training loss")
    if ax_loss.get_legend_handles_labels()[0]:
        ax_loss.legend(fontsize=8)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_ylim(0, 1.02)
    if max_epoch:
        ax_loss.set_xlim(0, max_epoch * 1.02)
        ax_acc.set_xlim(0, max_epoch * 1.02)
    ax_acc.set_title("accuracy")
    if ax_acc.get_legend_handles_labels()[0]:
        ax_acc.legend(fontsize=8)
    first = results[0]
    fig.suptitle(f"videoconv train: data {first.get('data')}, preset {first.get('preset')}", fontsize=10)
    fig.tight_layout()
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# the run


def _log(ctx: DistributedContext, message: str) -> None:
    if ctx.is_main:
        print(message, file=sys.stderr, flush=True)


def _progress_bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, disable=not enabled, leave=False, dynamic_ncols=True,
                unit="batch")


def _param_checksum(model: nn.Module) -> float:
    with torch.no_grad():
        return float(sum(p.detach().double().sum().item() for p in model.parameters()))


def _environment(ctx: DistributedContext) -> Dict[str, Any]:
    # The benchmark rows' record (date, device, versions, git revision, exact command), so a
    # committed training report says what produced it, plus what matters for a training run.
    from ..bench.environment import environment

    env = environment(ctx.device)
    env.update({
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else None,
    })
    return env


def run_training(
    config: TrainConfig,
    model: Optional[nn.Module] = None,
    datasets: Optional[Tuple[Any, Any, Any]] = None,
) -> Dict[str, Any]:
    """Train ``config.model`` on ``config.data`` and return the report (see the module docstring).

    ``model`` (an ``nn.Module`` taking (N, C, T, H, W) clips) and ``datasets`` (``(train, val,
    info)`` as :func:`videoconv.data.make_datasets` returns them) replace the zoo model and the
    named data, for programmatic use and tests.
    """
    from torch.utils.data import DataLoader, DistributedSampler, Subset

    t_start = time.perf_counter()
    ctx = setup_distributed(config.device)
    try:
        return _run(config, ctx, model, datasets, t_start, DataLoader, DistributedSampler, Subset)
    finally:
        cleanup_distributed(ctx)


def resolve_hyperparameters(config: TrainConfig, info: Any) -> Dict[str, Any]:
    """The run's hyperparameters: ``config``'s where set, else the data preset's (``info``),
    else defaults."""
    return {
        "epochs": int(config.epochs if config.epochs is not None else _get(info, "epochs", 10)),
        "batch_size": int(config.batch_size if config.batch_size is not None else _get(info, "batch_size", 16)),
        "lr": float(config.lr if config.lr is not None else _get(info, "lr", 0.05)),
        "weight_decay": float(config.weight_decay if config.weight_decay is not None
                              else _get(info, "weight_decay", 1e-4)),
        "momentum": float(config.momentum if config.momentum is not None else _get(info, "momentum", 0.9)),
        "optimizer": str(config.optimizer or _get(info, "optimizer", "sgd")),
        "scheduler": str(config.scheduler or _get(info, "scheduler", None) or _get(info, "lr_schedule", "cosine")),
        "warmup_epochs": float(config.warmup_epochs if config.warmup_epochs is not None
                               else _get(info, "warmup_epochs", 0.0)),
        "augment": config.augment if config.augment is not None else _get(info, "augment", False),
        "accumulation_steps": int(config.accumulate),
        "amp": config.amp if config.amp is not None else _get(info, "amp", None),
        "max_grad_norm": config.max_grad_norm if config.max_grad_norm is not None else _get(info, "max_grad_norm"),
    }


def _load_datasets(config: TrainConfig):
    from videoconv.data import make_datasets

    return make_datasets(config.data, preset=config.preset, root=config.root, seed=config.seed)


def _run(config, ctx, model, datasets, t_start, DataLoader, DistributedSampler, Subset) -> Dict[str, Any]:
    device = ctx.device
    if config.threads:
        torch.set_num_threads(int(config.threads))
    torch.manual_seed(config.seed)

    # -- data -------------------------------------------------------------------------------
    if datasets is None:
        datasets = _load_datasets(config)
    train_ds, val_ds, info = datasets
    num_classes = int(_get(info, "num_classes"))
    hp = resolve_hyperparameters(config, info)
    amp_dtype = resolve_amp_dtype(hp["amp"])
    amp_name = str(amp_dtype).replace("torch.", "") if amp_dtype else "none"
    hp["amp"] = amp_name
    if hp["batch_size"] % ctx.world_size:
        raise ValueError(
            f"batch size {hp['batch_size']} (global) must be divisible by the {ctx.world_size} processes"
        )
    local_batch = hp["batch_size"] // ctx.world_size
    num_workers = config.num_workers if config.num_workers is not None else int(_get(info, "num_workers", 0))
    train_sampler = DistributedSampler(
        train_ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=config.seed, drop_last=False
    )
    loader_kw = dict(num_workers=num_workers, pin_memory=device.type == "cuda",
                     persistent_workers=num_workers > 0)
    train_loader = DataLoader(train_ds, batch_size=local_batch, sampler=train_sampler, **loader_kw)
    val_shard = Subset(val_ds, list(range(ctx.rank, len(val_ds), ctx.world_size))) if ctx.enabled else val_ds
    val_loader = DataLoader(val_shard, batch_size=max(local_batch, 1) * 2, shuffle=False, **loader_kw)
    augmentation = _load_augmentation(hp["augment"])
    eval_transform = None
    if augmentation is not None:
        augmentation = augmentation.to(device).train()
        eval_transform = copy.deepcopy(augmentation).eval()
        hp["augment"] = repr(augmentation)
    aug_generator = torch.Generator()  # parameters drawn on CPU, moved to the batch's device
    aug_generator.manual_seed(config.seed * 1000 + 17 + ctx.rank)

    # -- model ------------------------------------------------------------------------------
    model_name = config.model
    if model is None:
        from videoconv import models as zoo

        model = zoo.get_model(config.model, num_classes=num_classes)
    else:
        model_name = config.model or type(model).__name__
    if config.fuse:
        import videoconv

        model = videoconv.fuse(model)
    model = model.to(device)
    model.train()

    # -- memory report (before DDP/SyncBatchNorm: measures one process's step) -------------------
    memory = None
    if config.report_memory:
        if ctx.is_main:
            clips, labels = next(iter(train_loader))
            clips, labels = clips.to(device), torch.as_tensor(labels).to(device)
            if augmentation is not None:
                clips, labels = _apply_augmentation(augmentation, clips, labels, torch.Generator().manual_seed(0))
            memory = measure_step_memory(
                model, clips, labels, stages=config.checkpoint_stages or "all", amp=amp_name,
                optimizer=hp["optimizer"],
            )
            print(format_memory_report(memory, model_name), flush=True)
        _barrier(ctx)

    sync_bn: Dict[str, Any] = {"used": False}
    if ctx.enabled and has_batchnorm(model):
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            sync_bn = {"used": True}
            if config.fuse:
                sync_bn["note"] = ("fused Conv-BN-act modules compute their BatchNorm statistics inside "
                                   "the fused op over the local batch; SyncBatchNorm covers the unfused ones")
        else:
            sync_bn = {"used": False, "reason": "torch's SyncBatchNorm needs CUDA/XPU/HPU tensors; "
                       "with gloo on CPU each process normalises over its own shard"}
    if config.checkpoint_stages:
        checkpoint_stages(model, config.checkpoint_stages)
    ck_names = checkpointed_stages(model)
    train_model: nn.Module = model
    if ctx.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    optimizer = make_optimizer(model, hp["optimizer"], hp["lr"], hp["weight_decay"], hp["momentum"])
    batches_per_epoch = len(train_loader)
    if config.max_steps_per_epoch:
        batches_per_epoch = min(batches_per_epoch, int(config.max_steps_per_epoch))
    opt_steps_per_epoch = math.ceil(batches_per_epoch / hp["accumulation_steps"])
    scheduler = make_scheduler(
        optimizer, hp["scheduler"], total_steps=hp["epochs"] * opt_steps_per_epoch,
        warmup_steps=round(hp["warmup_epochs"] * opt_steps_per_epoch),
    )
    step = TrainStep(
        train_model, optimizer, amp=amp_dtype, accumulation_steps=hp["accumulation_steps"],
        max_grad_norm=hp["max_grad_norm"], scheduler=scheduler, device_type=device.type,
    )
    show_progress = bool(config.progress) and ctx.is_main and sys.stderr.isatty()
    # Without a terminal (logs, CI): one line every 30 s instead of a bar.
    log_every_s = 30.0 if (config.progress and ctx.is_main and not show_progress) else None
    setup_s = time.perf_counter() - t_start
    k = hp["accumulation_steps"]
    accumulation_note = f", {k} micro-batches per optimizer step" if k > 1 else ""
    _log(ctx, f"videoconv train: {model_name} on {config.data} ({config.preset}), {len(train_ds)} train / "
              f"{len(val_ds)} val clips, {num_classes} classes, {hp['epochs']} epochs, batch {hp['batch_size']}"
              f"{f' ({local_batch} per process x {ctx.world_size})' if ctx.enabled else ''}"
              f"{accumulation_note}, {device}"
              f"{f', amp {amp_name}' if amp_dtype else ''}"
              f"{f', checkpointing {len(ck_names)} stages' if ck_names else ''}")

    # -- epochs -----------------------------------------------------------------------------
    loss_curve: List[float] = []
    acc_curve: List[float] = []
    epochs: List[Dict[str, Any]] = []
    train_s = eval_s = data_s = 0.0
    step_times: List[float] = []
    samples_seen = 0
    for epoch in range(hp["epochs"]):
        train_sampler.set_epoch(epoch)
        train_model.train()
        t_epoch = time.perf_counter()
        losses: List[float] = []
        accs: List[float] = []
        correct = count = 0
        bar = _progress_bar(batches_per_epoch, f"epoch {epoch + 1}/{hp['epochs']}", show_progress)
        t_data = t_logged = time.perf_counter()
        for index, (clips, labels) in enumerate(train_loader):
            if index >= batches_per_epoch:
                break
            clips = clips.to(device, non_blocking=True)
            labels = torch.as_tensor(labels).to(device, non_blocking=True)
            if augmentation is not None:
                clips, labels = _apply_augmentation(augmentation, clips, labels, aug_generator)
            t_step = time.perf_counter()
            data_s += t_step - t_data
            result = step(clips, labels, force_step=index == batches_per_epoch - 1)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t_data = time.perf_counter()
            step_times.append(t_data - t_step)
            losses.append(result.loss)
            accs.append(result.accuracy)
            correct += result.correct
            count += result.count
            bar.update(1)
            bar.set_postfix(loss=f"{result.loss:.3f}", acc=f"{correct / max(count, 1):.3f}",
                            lr=f"{optimizer.param_groups[0]['lr']:.3g}")
            if log_every_s is not None and t_data - t_logged >= log_every_s:
                t_logged = t_data
                _log(ctx, f"  epoch {epoch + 1}: {index + 1}/{batches_per_epoch} batches, loss {result.loss:.4f}, "
                          f"running acc {correct / max(count, 1):.3f}, {t_data - t_epoch:.0f}s")
        bar.close()
        samples_seen += count
        if ctx.enabled:
            losses = [v / ctx.world_size for v in _all_reduce_sum(ctx, losses)]
            accs = [v / ctx.world_size for v in _all_reduce_sum(ctx, accs)]
            correct, count = (int(v) for v in _all_reduce_sum(ctx, [correct, count]))
            _broadcast_buffers(ctx, model)
        loss_curve.extend(losses)
        acc_curve.extend(accs)
        epoch_train_s = time.perf_counter() - t_epoch
        train_s += epoch_train_s
        t_eval = time.perf_counter()
        val_loss, val_acc, val_count = evaluate(model, val_loader, device, amp_dtype, ctx, eval_transform)
        epoch_eval_s = time.perf_counter() - t_eval
        eval_s += epoch_eval_s
        record = {
            "epoch": epoch + 1,
            "train_loss": sum(losses) / max(len(losses), 1),
            "train_acc": correct / max(count, 1),
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr_end": optimizer.param_groups[0]["lr"],
            "train_s": round(epoch_train_s, 3),
            "eval_s": round(epoch_eval_s, 3),
        }
        epochs.append(record)
        _log(ctx, f"epoch {epoch + 1}/{hp['epochs']}: train loss {record['train_loss']:.4f} acc "
                  f"{record['train_acc']:.3f} | val loss {val_loss:.4f} acc {val_acc:.3f} | "
                  f"{epoch_train_s:.1f}s + {epoch_eval_s:.1f}s eval")

    if not epochs:  # --epochs 0: evaluate the initial model
        t_eval = time.perf_counter()
        val_loss, val_acc, val_count = evaluate(model, val_loader, device, amp_dtype, ctx, eval_transform)
        eval_s += time.perf_counter() - t_eval

    ranks = _all_gather_object(ctx, {"rank": ctx.rank, "samples_seen": samples_seen,
                                     "param_checksum": _param_checksum(model)})
    total_s = time.perf_counter() - t_start
    report: Dict[str, Any] = {
        "model": model_name,
        "data": config.data,
        "preset": config.preset,
        "device": str(device),
        "world_size": ctx.world_size,
        "distributed_backend": ctx.backend,
        "sync_batchnorm": sync_bn,
        "amp": amp_name,
        "checkpoint_stages": ck_names,
        "available_stages": stage_names(model),
        "fused": bool(config.fuse),
        "seed": config.seed,
        "hyperparameters": hp,
        "num_classes": num_classes,
        "chance_acc": 1.0 / num_classes,
        "clip_shape": list(_get(info, "clip_shape", [])) or None,
        "train_samples": len(train_ds),
        "val_samples": len(val_ds),
        "val_acc": val_acc,
        "val_loss": val_loss,
        "train_acc": epochs[-1]["train_acc"] if epochs else None,
        "train_loss": epochs[-1]["train_loss"] if epochs else None,
        "loss_curve": loss_curve,
        "train_acc_curve": acc_curve,
        "steps_per_epoch": batches_per_epoch,
        "epochs": epochs,
        "timings": {
            "setup_s": round(setup_s, 3),
            "train_s": round(train_s, 3),
            "eval_s": round(eval_s, 3),
            "data_s": round(data_s, 3),
            "total_s": round(total_s, 3),
            "step_ms_mean": round(1000 * sum(step_times) / len(step_times), 2) if step_times else None,
            "samples_per_s": round(sum(r["samples_seen"] for r in ranks) / train_s, 2) if train_s else None,
        },
        "memory": memory,
        "ranks": ranks,
        "environment": _environment(ctx),
    }
    if ctx.is_main:
        plot_path = config.plot_path
        if plot_path is None and config.json_path:
            plot_path = os.path.splitext(config.json_path)[0] + ".png"
        if plot_path:
            others = []
            for other in config.plot_with or ():
                with open(other) as f:
                    others.append(json.load(f))
            report["plot"] = plot_training_curves([report] + others, plot_path)
        if config.json_path:
            if os.path.dirname(config.json_path):
                os.makedirs(os.path.dirname(config.json_path), exist_ok=True)
            with open(config.json_path, "w") as f:
                json.dump(report, f, indent=1)
    _barrier(ctx)
    return report
