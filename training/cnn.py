"""CNN front-end: standardised log-mel (B, 512, 64) -> auditory feature sequence (B, 64, 128).

Seven blocks of convolution, batch norm, ReLU, dropout and average pooling (paper section 3.1.2); the
frequency axis is pooled down to one bin and time by 8, so each output vector is one 0.1565 s frame.
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
        # Only needed if the last block's channels differ from d_model.
        self.proj = nn.Identity() if in_ch == d_model else nn.Linear(in_ch, d_model)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        """(B, T, F) -> (B, T / time_pooling, d_model); F must pool down to exactly one bin."""
        x = self.blocks(logmel.unsqueeze(1))  # (B, C, T', F')
        if x.shape[-1] != 1:
            raise ValueError(f"CNN front-end leaves {x.shape[-1]} frequency bins (input {logmel.shape[-1]} bins, "
                             f"frequency pooling {self.freq_pooling}); it must pool them to 1")
        return self.proj(x.squeeze(-1).transpose(1, 2))
