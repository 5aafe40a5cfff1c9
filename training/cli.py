"""`avsed train` and `avsed paper` entries: command-line flags -> TrainConfig -> train() for one seed,
train_group() for `--seeds`, the paper grid for `paper`. Light to import (no torch) so that building the
`avsed` parser stays fast; the training modules are imported when a command runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from training.config import TrainConfig

CHECKPOINT = "checkpoint.pt"  # training.checkpoint.CHECKPOINT, without importing torch here


def parse_seeds(text: str) -> list[int]:
    """"0-19" -> 0..19; "0,3,5-7" -> [0, 3, 5, 6, 7]; a count "20" is seed 20 (use 0-19 for twenty seeds)."""
    seeds: list[int] = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        try:
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                if b < a:
                    raise ValueError
                seeds.extend(range(a, b + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise ValueError(f"--seeds {text!r}: {part!r} is not a seed or a range like 0-19") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"--seeds {text!r}: give distinct non-negative seeds, e.g. 0-19 or 0,1,2")
    return seeds


def seeds_argument(text: str) -> list[int]:
    """argparse `type=` for --seeds: a bad value becomes argparse's one-line usage error."""
    try:
        return parse_seeds(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _seed_list(value) -> list[int] | None:
    if value is None or value == []:
        return None
    return parse_seeds(value) if isinstance(value, str) else [int(s) for s in value]


def seed_dir(out: str | Path, seed: int) -> Path:
    """Run directory of one seed of a group (what `avsed report runs/<model>/seed*` expects)."""
    return Path(out) / f"seed{seed}"


def config_from_args(args: argparse.Namespace) -> TrainConfig | None:
    """The config file (or the paper defaults) with --seed / --steps / --device applied; None resumes with the
    checkpoint's own config when no flag changes it."""
    seeds = _seed_list(getattr(args, "seeds", None))
    out = Path(args.out)
    dirs = [seed_dir(out, s) for s in seeds] if seeds else [out]
    resuming = getattr(args, "resume", False) and all((d / CHECKPOINT).exists() for d in dirs)
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
    from training.train import train, train_group

    seeds = _seed_list(getattr(args, "seeds", None))
    if seeds and args.seed is not None:
        raise SystemExit("avsed train: give --seed or --seeds, not both")
    config = config_from_args(args)
    if seeds:
        results = train_group(args.store, config, {s: seed_dir(args.out, s) for s in seeds}, resume=args.resume)
    else:
        results = [train(args.store, config, args.out, resume=args.resume)]
    for result in results:
        losses = ", ".join(f"{k} {v:.4f}" for k, v in result.last_losses.items())
        print(f"{result.out_dir}: {result.steps} steps ({result.trained_steps} trained now, "
              f"{result.samples_per_second:.1f} samples/s per seed); last losses: {losses}")
    print(f"checkpoints: {', '.join(str(r.checkpoint) for r in results)}")
    return 0


def run_paper_command(args: argparse.Namespace) -> int:
    """`avsed paper`: the grid of the paper's Tables 5-8, trained, evaluated and tabulated."""
    from training.paper import seeds_argument

    base = TrainConfig.load(args.config) if args.config else TrainConfig()
    if args.steps is not None:
        base.epochs, base.steps_per_epoch = 1, args.steps
    if args.device:
        base.device = args.device
    options = dict(store=args.store, out_dir=args.out, seeds=seeds_argument(args.seeds),
                   architectures=[a.strip() for a in args.architectures.split(",") if a.strip()],
                   base=base.validate().to_dict(),
                   train_audio_weights=[float(w) for w in args.train_audio_weights.split(",")],
                   features=[f.strip() for f in args.features.split(",")] if args.features else None,
                   plots=not args.no_plots, device=args.device or "auto",
                   inference_audio_weights=[float(w) for w in args.inference_audio_weights.split(",")])
    if args.engine == "prefect":
        from flows import in_process_defaults

        in_process_defaults()
        from flows.paper import paper_flow

        summary = paper_flow(**options)
    else:
        from training.paper import run_paper, summary_of

        summary = summary_of(run_paper(**{**options, "base": base}))
    print(f"trained {summary['trained_runs']} runs, evaluated {summary['evaluated_runs']} runs "
          f"({len(summary['entries'])} models x {len(options['seeds'])} seeds)")
    print(Path(summary["tables"]["markdown"]).read_text())
    return 0
