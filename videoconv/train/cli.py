"""``videoconv train``: train a zoo model on a data preset (single process or under torchrun).

    videoconv train --model r2plus1d_18 --data synthetic-motion --preset smoke --json out/r2p1d.json
    videoconv train --model r3d_18 --amp bfloat16 --checkpoint-stages all --report-memory
    torchrun --nproc_per_node 2 -m videoconv train --model r2plus1d_18 --json out/ddp.json

Also runnable as ``python -m videoconv.train.cli ...`` (the same options, without ``train``).
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

__all__ = ["add_train_parser", "main", "config_from_args", "build_parser"]


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``train`` subcommand on an ``argparse`` subparsers object; returns it."""
    p = subparsers.add_parser(
        "train",
        help="train a zoo model (AMP, gradient checkpointing, accumulation, DDP under torchrun)",
        description="Train a zoo model on a data preset and report validation accuracy, the loss "
        "curve and timings. Options left out take the preset's values. Under torchrun each "
        "process trains on its shard with DistributedDataParallel (gloo on CPU, nccl on GPU).",
    )
    _add_arguments(p)
    p.set_defaults(func=main)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="r2plus1d_18", help="a name from videoconv.models.list_models() "
                   "(default r2plus1d_18)")
    p.add_argument("--data", default="synthetic-motion", help="'synthetic-motion' or a folder of clips "
                   "(default synthetic-motion)")
    p.add_argument("--preset", default="smoke", help="data/training preset (default smoke)")
    p.add_argument("--root", help="where the data preset caches or finds its files")
    p.add_argument("--epochs", type=int, help="epochs (default: the preset's; 0 only evaluates)")
    p.add_argument("--batch-size", type=int, help="global batch per micro-step, split over processes")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--optimizer", choices=["sgd", "adamw", "adam"])
    p.add_argument("--amp", choices=["none", "float16", "bfloat16"],
                   help="autocast dtype: float16 uses a GradScaler, bfloat16 none (default: the "
                   "preset's, else none)")
    p.add_argument("--accumulate", type=int, default=1, metavar="N",
                   help="micro-batches per optimizer step (effective batch = N x batch size)")
    p.add_argument("--clip-grad", type=float, metavar="NORM", help="clip the gradient norm to NORM")
    p.add_argument("--checkpoint-stages", nargs="?", const="all", metavar="STAGES",
                   help="gradient-checkpoint these stages: 'all' (the default when the flag has no "
                   "value) or comma-separated names (an unknown name lists the valid ones)")
    p.add_argument("--fuse", action="store_true",
                   help="run the model through videoconv.fuse (fused modules in training mode)")
    p.add_argument("--report-memory", action="store_true",
                   help="measure the peak memory of one training step with and without "
                   "checkpointing (the --checkpoint-stages stages, default all) before training")
    p.add_argument("--json", metavar="PATH", help="write the report (val_acc, loss curve, timings...) here")
    p.add_argument("--plot", metavar="PATH", help="PNG of the training curves (default: beside --json, .png)")
    p.add_argument("--plot-with", nargs="+", default=[], metavar="JSON",
                   help="other runs' --json reports to draw in the same plot")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu or cuda (default: cuda if present); under torchrun, cuda:LOCAL_RANK")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it is off anyway when "
                   "stderr is not a terminal)")
    p.add_argument("--num-workers", type=int, help="DataLoader workers (default: the preset's, else 0)")
    p.add_argument("--threads", type=int, help="torch intra-op threads per process (default: torch's; "
                   "on a busy machine fewer threads than cores avoids OpenMP oversubscription)")
    p.add_argument("--max-steps-per-epoch", type=int, help=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace):
    from .loop import TrainConfig

    return TrainConfig(
        model=args.model,
        data=args.data,
        preset=args.preset,
        root=args.root,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        optimizer=args.optimizer,
        amp=args.amp,
        accumulate=args.accumulate,
        max_grad_norm=args.clip_grad,
        checkpoint_stages=args.checkpoint_stages,
        fuse=args.fuse,
        report_memory=args.report_memory,
        json_path=args.json,
        plot_path=args.plot,
        plot_with=tuple(args.plot_with),
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
        num_workers=args.num_workers,
        threads=args.threads,
        max_steps_per_epoch=args.max_steps_per_epoch,
    )


def main(args: argparse.Namespace) -> int:
    """Run ``videoconv train`` with parsed ``args``; prints a summary, returns the exit code."""
    from .loop import run_training

    if args.accumulate < 1:
        raise ValueError(f"--accumulate must be >= 1, got {args.accumulate}")
    config = config_from_args(args)
    report = run_training(config)
    if report.get("world_size", 1) > 1 and report["ranks"] and (
        len({r["param_checksum"] for r in report["ranks"]}) != 1
    ):
        print("warning: the processes ended with different parameters", file=sys.stderr)
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        t = report["timings"]
        print(
            f"{report['model']}: val_acc {report['val_acc']:.4f} (chance {report['chance_acc']:.3f}, "
            f"{report['num_classes']} classes), val_loss {report['val_loss']:.4f}, "
            f"{t['total_s']:.1f}s total ({t['train_s']:.1f}s training, {t['eval_s']:.1f}s eval)"
        )
        if args.json:
            print(f"wrote {args.json}" + (f" and {report['plot']}" if report.get("plot") else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser with the train options (``python -m videoconv.train.cli``)."""
    parser = argparse.ArgumentParser(prog="videoconv train", description="Train a zoo model on a data preset (single process or under torchrun).")
    _add_arguments(parser)
    return parser


def _standalone(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return main(args)
    except (ValueError, TypeError) as exc:
        print(f"videoconv train: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_standalone())
