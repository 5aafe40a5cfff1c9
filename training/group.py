"""Seeds of one configuration as one stacked model: every parameter and buffer gets a leading seed axis.

The seeds' student and teacher models are built exactly as a single run builds them (each from its own seed),
then stacked (`torch.func.stack_module_state`). A per-seed function runs over all seeds at once with
`torch.func.vmap(randomness="different")` (independent dropout per seed) and `functional_call` on one
parameter-less skeleton of the model; batch-norm running statistics stay per seed. A group of one calls the
function directly, without vmap. Each seed's state can be taken out again as an ordinary `state_dict`, so a
seed of a group writes the same checkpoint as a run of its own.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.utils._pytree import tree_map

from training.config import ModelConfig, TrainConfig
from training.fusion import MultiEncoderModel
from training.models import build_model


def build_seed_model(config: ModelConfig, visual_dims: Sequence[int], seed: int, device: torch.device,
                     dtype: torch.dtype) -> MultiEncoderModel:
    """The model a run with this seed starts from: torch's generator seeded with `seed`, then built."""
    torch.manual_seed(seed)
    return build_model(config, visual_dims).to(device=device, dtype=dtype)


@dataclass
class StackedModels:
    """Parameters (leaf tensors) and buffers of several models of one architecture, stacked on axis 0."""

    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    state_names: list[str]  # state_dict order of the model (parameters and buffers interleaved)

    @classmethod
    def stack(cls, models: Sequence[nn.Module], requires_grad: bool) -> "StackedModels":
        params, buffers = stack_module_state(list(models))
        params = {k: v.detach().requires_grad_(requires_grad) for k, v in params.items()}
        return cls(params, dict(buffers), list(models[0].state_dict().keys()))

    @property
    def size(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def parameter_list(self) -> list[torch.Tensor]:
        return list(self.params.values())

    def state_dict(self, index: int) -> dict[str, torch.Tensor]:
        """Seed `index`'s state_dict, on the CPU, in the model's own key order."""
        both = {**self.params, **self.buffers}
        return {k: both[k][index].detach().cpu().clone() for k in self.state_names}

    @torch.no_grad()
    def load_state_dicts(self, states: Sequence[dict[str, torch.Tensor]]) -> None:
        for name, tensor in {**self.params, **self.buffers}.items():
            tensor.copy_(torch.stack([s[name] for s in states]))


def skeleton_of(model: nn.Module) -> nn.Module:
    """A copy of the model without storage (meta tensors): the structure that `functional_call` runs."""
    return copy.deepcopy(model).to("meta")


def over_seeds(fn: Callable[..., Any], n_seeds: int) -> Callable[..., Any]:
    """`fn` written for one seed (arguments without the seed axis) -> the same over stacked arguments.

    A group of one calls `fn` on the seed's slices (views, so gradients and in-place buffer updates reach the
    stacked tensors) and adds the seed axis to its result; larger groups use vmap with per-seed randomness.
    The slice is `squeeze(0)`, not `t[0]`: indexing records a `select` whose backward fills a zero tensor and
    scatters into it (measured on an H100: 242 `select_backward` + fills, 0.57 ms a step); a squeeze's backward
    is a free view.
    """
    if n_seeds > 1:
        return vmap(fn, randomness="different")

    def single(*args):
        out = fn(*tree_map(lambda t: t.squeeze(0) if isinstance(t, torch.Tensor) else t, args))
        return tree_map(lambda t: t.unsqueeze(0) if isinstance(t, torch.Tensor) else t, out)
    return single


def call_model(skeleton: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
               *inputs: Any) -> Any:
    return functional_call(skeleton, (params, buffers), inputs)


# Bytes of device memory per seed for each element of the CNN front-end's feature maps at the training batch (est.):
# what the eager bf16 step keeps for the backward (convolution, batch-norm and ReLU outputs, dropout masks, pooling)
# plus the teacher's forward and vmap's copies. Calibrated so that 8 seeds of the paper's transformer bi-encoder
# fit an 80 GB H100 and 20 do not (measured 2026-11-25); benchmarks/gpu_bench.py measures the real peak per seed.
BYTES_PER_FEATURE_MAP_ELEMENT = 40
CPU_GROUP_SEEDS = 4  # a fixed group off CUDA (memory there is the host's, and a group is not faster per seed)
FREE_MEMORY_FRACTION = 0.8  # of the free device memory a group may plan to use (allocator slack, CUDA graphs)


def seed_bytes_estimate(config: TrainConfig) -> int:
    """Device memory one seed's training step needs (est.), from the size of its front-end's feature maps."""
    cnn, batch = config.model.cnn, config.batch_strong + config.batch_weak + config.batch_unlabelled
    t, f = 512, 64  # the paper's log-mel input (frames, mel bins)
    elements = 0
    for channels, (pt, pf) in zip(cnn.filters, cnn.pooling):
        elements += channels * t * f
        t, f = t // pt, f // pf
    return int(BYTES_PER_FEATURE_MAP_ELEMENT * batch * elements)


def group_size(config: TrainConfig, device: torch.device, n_seeds: int) -> int:
    """Seeds trained at once: `group_seeds` when set; otherwise on CUDA as many as the free memory holds at the
    estimated bytes per seed (at least 1), and CPU_GROUP_SEEDS elsewhere."""
    if config.group_seeds is not None:
        return int(config.group_seeds)
    if device.type != "cuda":
        return min(CPU_GROUP_SEEDS, max(1, n_seeds))
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, min(n_seeds, int(FREE_MEMORY_FRACTION * free) // seed_bytes_estimate(config)))
