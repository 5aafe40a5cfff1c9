"""CNN front-end: standardised log-mel (B, 512, 64) -> auditory feature sequence (B, 64, 128).

Seven blocks of convolution, batch norm, ReLU, dropout and average pooling (paper section 3.1.2); the
frequency axis is pooled down to one bin and time by 8, so each output vector is one 0.1565 s frame.

On CUDA the feature maps are kept channels-last (NHWC): measured on an H100 (benchmarks/results/
profile_training_cuda.md), batch norm over NCHW bf16 maps ran PyTorch's generic per-channel reduction kernels and
took ~28 of a transformer step's ~44 ms; in NHWC the front-end's forward + backward at batch 128 took 10.9 ms
instead of 22.4 ms. Same arithmetic, another memory layout (checked equal on the CPU in tests/training/test_models.py).
"""

from __future__ import annotations

import torch
from torch import nn

from training.config import CNNConfig
from training.dropout import dropout_layer


class CNNFrontEnd(nn.Module):
    def __init__(self, config: CNNConfig, d_model: int):
        super().__init__()
        # Keras momentum 0.9 (weight of the running average) == PyTorch momentum 0.1 (weight of the batch).
        bn_momentum = 1.0 - config.batch_norm_momentum
        blocks = []
        in_ch = 1
        for out_ch, k, pool in zip(config.filters, config.kernel, config.pooling):
            blocks.append(nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=k, padding=k // 2),
                nn.BatchNorm2d(out_ch, momentum=bn_momentum),
                nn.ReLU(),
                dropout_layer(config.dropout),
                nn.AvgPool2d(kernel_size=tuple(pool)),
            ))
            in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.time_pooling = 1
        self.freq_pooling = 1
        for pool in config.pooling:
            self.time_pooling *= pool[0]
            self.freq_pooling *= pool[1]
        self.out_channels = in_ch
        # None: channels-last on CUDA only (where it pays); True/False force it (tests compare the two on the CPU).
        self.channels_last: bool | None = None
        # Only needed if the last block's channels differ from d_model.
        self.proj = nn.Identity() if in_ch == d_model else nn.Linear(in_ch, d_model)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        """(B, T, F) -> (B, T / time_pooling, d_model); F must pool down to exactly one bin."""
        x = logmel.unsqueeze(1)  # (B, 1, T, F)
        channels_last = logmel.is_cuda if self.channels_last is None else self.channels_last
        for block in self.blocks:
            for layer in block:
                x = layer(x)
                if channels_last and isinstance(layer, nn.Conv2d):
                    # A one-channel input is both layouts at once, so the first convolution's output would stay
                    # NCHW: ask for NHWC after each convolution (no copy once the maps are NHWC). Spelt as
                    # permutes because vmap (seeds trained together) cannot query memory formats.
                    x = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        # x: (B, C, T', F')
        if x.shape[-1] != 1:
            raise ValueError(f"CNN front-end leaves {x.shape[-1]} frequency bins (input {logmel.shape[-1]} bins, "
                             f"frequency pooling {self.freq_pooling}); it must pool them to 1")
        return self.proj(x.squeeze(-1).transpose(1, 2))
