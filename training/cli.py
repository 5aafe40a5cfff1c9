"""`avsed train` entry: command-line flags -> TrainConfig -> train()."""

from __future__ import annotations

import argparse
from pathlib import Path

from training.config import TrainConfig
from training.train import CHECKPOINT, train


def config_from_args(args: argparse.Namespace) -> TrainConfig | None:
    """The config file (or the paper defaults) with --seed / --steps / --device applied; None resumes with the
    checkpoint's own config when no flag changes it."""
    resuming = getattr(args, "resume", False) and (Path(args.out) / CHECKPOINT).exists()
    if resuming and not args.config and args.seed is None and args.steps is None and not args.device:
        return None
    config = TrainConfig.load(args.config) if args.config else TrainConfig()
    if args.seed is not None:
        config.seed = args.seed
    if args.steps is not None:
        # --steps N: a run of N steps (one "epoch" of N batches); the lr decay period is unchanged.
        config.epochs, config.steps_per_epoch = 1, args.steps
    if args.device:
        config.device = args.device
    return config.validate()


def run_train(args: argparse.Namespace) -> int:
    result = train(args.store, config_from_args(args), args.out, resume=args.resume)
    losses = ", ".join(f"{k} {v:.4f}" for k, v in result.last_losses.items())
    print(f"trained {result.steps} steps ({result.samples_per_second:.1f} samples/s); last losses: {losses}")
    print(f"checkpoint: {result.checkpoint}")
    return 0
