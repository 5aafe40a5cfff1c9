"""Everything random about a training batch, drawn on the device per seed: which clips (the batch schedule),
whether mixup applies, its ratio and partners, and the audio interpolation weight.

Draws are made for a chunk of `DRAW_CHUNK` steps at once with torch generators on the training device, so a
step reads them from device memory and never waits for the host. Each generator is seeded from (seed, what,
chunk) (the batch schedule: (seed, kind, pass)), so the draws of any step are a pure function of the seed and
the step: a resumed run redraws exactly what it lost, and a seed draws the same whether it trains alone or in a
group. The chunk length is part of that definition and therefore a constant, not a setting.

Per step and seed:
- indices (B,): `sizes[k]` clips of each supervision kind, in kind order; each kind cycles through its clips
  in a fresh random permutation per pass (like DESED's concatenated random samplers).
- mix (): mixup applies to this batch (probability `mixup_rate`, paper: 33%).
- lam (): mixing ratio ~ Beta(alpha, alpha) (paper: alpha 0.2).
- partner (B,): a permutation of the batch that pairs clips only within their supervision kind.
- audio_weight (): ~ U(random_audio_low, random_audio_high) (paper: U(0.25, 1)), used by "random" weights.
- video_drop (B,): ~ U(0, 1) per batch position; a learned gate's training hides the clip's video where it is
  below `model.gate.video_dropout` (training/step.py). Drawn last, so the draws above are those of earlier runs.
Every draw is made whatever the configuration uses, so the streams never depend on other settings.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np
import torch

from training.data import KIND_CODES, TrainingDataError

DRAW_CHUNK = 256
_SCHEDULE, _DRAWS = 1, 2  # stream identifiers mixed into the generator seeds


def stream_seed(*keys: int) -> int:
    """A 63-bit generator seed from integer keys (numpy's SeedSequence: well-mixed, platform independent)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def kind_slices(sizes: Sequence[int]) -> list[slice]:
    bounds = np.cumsum([0] + list(sizes))
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


@dataclass
class StepDraws:
    """Draws of consecutive steps; each field has leading axes (steps, ...) or (steps, seeds, ...)."""

    indices: torch.Tensor  # int64 (..., B) rows of the resident training tensors
    mix: torch.Tensor  # bool (...)
    lam: torch.Tensor  # float64 (...)
    partner: torch.Tensor  # int64 (..., B) positions within the batch
    audio_weight: torch.Tensor  # float64 (...)
    video_drop: torch.Tensor  # float64 (..., B)

    def at(self, i: torch.Tensor | int) -> "StepDraws":
        """The draws of step `i` of the chunk; `i` may be a 1-element device tensor (no host read)."""
        if isinstance(i, int):
            return StepDraws(*(getattr(self, f.name)[i] for f in fields(self)))
        return StepDraws(*(getattr(self, f.name).index_select(0, i).squeeze(0) for f in fields(self)))

    def copy_(self, other: "StepDraws") -> None:
        for f in fields(self):
            getattr(self, f.name).copy_(getattr(other, f.name))

    @staticmethod
    def stack(draws: Sequence["StepDraws"], dim: int = 1) -> "StepDraws":
        return StepDraws(*(torch.stack([getattr(d, f.name) for d in draws], dim) for f in fields(StepDraws)))


class BatchSchedule:
    """Which training clips each step of one seed reads: a pure function of (seed, step)."""

    def __init__(self, kind: torch.Tensor, sizes: Sequence[int], seed: int):
        kind = kind.cpu()
        self.device = torch.device("cpu")
        self.members = [torch.nonzero(kind == k).flatten() for k in range(len(sizes))]
        self.sizes = [int(s) for s in sizes]
        self.seed = int(seed)
        for k, (m, size) in enumerate(zip(self.members, self.sizes)):
            if size > 0 and len(m) == 0:
                name = [n for n, c in KIND_CODES.items() if c == k][0]
                raise TrainingDataError(f"batch asks for {size} {name} clips per step but the training partitions "
                                        f"have none")
        self.slices = kind_slices(self.sizes)

    def to(self, device: torch.device | str) -> "BatchSchedule":
        self.device = torch.device(device)
        self.members = [m.to(self.device) for m in self.members]
        return self

    @property
    def batch_size(self) -> int:
        return sum(self.sizes)

    def _permutation(self, k: int, epoch: int, generator: torch.Generator) -> torch.Tensor:
        generator.manual_seed(stream_seed(self.seed, _SCHEDULE, k, epoch))
        n = len(self.members[k])
        return self.members[k][torch.randperm(n, generator=generator, device=self.device)]

    def indices(self, first_step: int, steps: int) -> torch.Tensor:
        """(steps, B) int64 on the device: the clips of steps first_step .. first_step + steps - 1."""
        generator = torch.Generator(device=self.device)
        out = []
        for k, size in enumerate(self.sizes):
            if size == 0:
                continue
            n = len(self.members[k])
            start, stop = first_step * size, (first_step + steps) * size
            passes = [self._permutation(k, e, generator) for e in range(start // n, (stop - 1) // n + 1)]
            flat = torch.cat(passes)[start - (start // n) * n: stop - (start // n) * n]
            out.append(flat.view(steps, size))
        return torch.cat(out, dim=1)


def draw_chunk(schedule: BatchSchedule, chunk: int, mixup_rate: float, mixup_alpha: float,
               audio_low: float, audio_high: float) -> StepDraws:
    """All draws of steps chunk * DRAW_CHUNK .. (chunk + 1) * DRAW_CHUNK - 1 for the schedule's seed."""
    device, k_steps, b = schedule.device, DRAW_CHUNK, schedule.batch_size
    generator = torch.Generator(device=device)
    generator.manual_seed(stream_seed(schedule.seed, _DRAWS, chunk))
    f64 = dict(dtype=torch.float64, device=device)
    mix = torch.rand(k_steps, generator=generator, **f64) < mixup_rate
    # Beta(a, a) as the first component of Dirichlet(a, a): torch has no Beta sampler that takes a generator.
    alpha = torch.full((k_steps, 2), float(mixup_alpha) if mixup_alpha > 0 else 1.0, **f64)
    lam = torch._sample_dirichlet(alpha, generator=generator)[:, 0]
    lam = torch.nan_to_num(lam, nan=0.5).clamp(0.0, 1.0)  # both gammas can underflow to 0 at small alpha
    # A random permutation within each kind: sort random keys offset by the kind (kinds stay in their slice).
    group = torch.cat([torch.full((s.stop - s.start,), float(k), **f64) for k, s in enumerate(schedule.slices)])
    keys = torch.rand(k_steps, b, generator=generator, **f64) + group
    partner = torch.argsort(keys, dim=1, stable=True)
    u = torch.rand(k_steps, generator=generator, **f64)
    audio_weight = audio_low + (audio_high - audio_low) * u
    video_drop = torch.rand(k_steps, b, generator=generator, **f64)
    indices = schedule.indices(chunk * DRAW_CHUNK, DRAW_CHUNK)
    return StepDraws(indices, mix, lam, partner, audio_weight, video_drop)
