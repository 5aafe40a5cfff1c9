"""Run directories and the seeds that name them: the one meaning of `--seeds` (for `avsed train` and `avsed
paper` alike), each seed's directory, and the checkpoint's file name in it (training/checkpoint.py writes it).
Light to import (no torch) so that building the `avsed` parser stays fast."""

from __future__ import annotations

import argparse
from pathlib import Path

CHECKPOINT = "checkpoint.pt"  # a run directory's checkpoint (training/checkpoint.py)


def parse_seeds(text: str) -> list[int]:
    """The one meaning of --seeds, in every command: a count "20" -> seeds 0..19 (the paper's twenty runs);
    ranges and lists "0-19", "0,3,5-7" -> those seeds; one particular seed k is "k-k" (or `train --seed k`)."""
    if str(text).strip().isdigit():
        count = int(str(text).strip())
        if count < 1:
            raise ValueError(f"--seeds {text!r}: a count of seeds must be at least 1 (e.g. 20 for seeds 0-19)")
        return list(range(count))
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


def seed_dir(out: str | Path, seed: int) -> Path:
    """Run directory of one seed of a group (what `avsed report runs/<model>/seed*` expects)."""
    return Path(out) / f"seed{seed}"
