"""Log-mel magnitude spectrogram as in the paper (3.1.2): 16 kHz, 64 bins, window 1024, hop 313 -> 512 frames / 10 s."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torchaudio

from features.base import AudioExtractor, register_extractor
from avsed.core.labels import ClipTiming


@dataclass(frozen=True)
class LogMelConfig:
    f_min: float = 0.0
    f_max: float = 8000.0
    # log(mel + eps): eps keeps silent frames finite; 1e-5 is far below the quietest real frames after peak normalisation.
    log_eps: float = 1e-5


@register_extractor
class LogMel(AudioExtractor):
    name = "logmel"
    version = "1"
    config_type = LogMelConfig

    def __init__(self, config: LogMelConfig | None = None):
        super().__init__(config)
        self._mel: torchaudio.transforms.MelSpectrogram | None = None
        self._timing: ClipTiming | None = None

    @property
    def dim(self) -> int:
        return ClipTiming().n_mels if self._timing is None else self._timing.n_mels

    def frames(self, timing: ClipTiming) -> int:
        return timing.mel_frames

    def _transform(self, timing: ClipTiming) -> torchaudio.transforms.MelSpectrogram:
        if self._mel is None or self._timing != timing:
            self._timing = timing
            self._mel = torchaudio.transforms.MelSpectrogram(
                sample_rate=timing.sample_rate, n_fft=timing.n_fft, win_length=timing.n_fft,
                hop_length=timing.hop_length, f_min=self.config.f_min, f_max=self.config.f_max,
                n_mels=timing.n_mels, power=1.0, center=True,  # power=1: magnitude, as the paper says
            )
        return self._mel

    def extract(self, waveform: np.ndarray, timing: ClipTiming) -> np.ndarray:
        """(frames, n_mels) of one waveform; (B, frames, n_mels) of a (B, samples) batch in one pass (detection
        runs many windows at once), each row as it would be alone."""
        x = torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32))
        with torch.inference_mode():
            mel = self._transform(timing)(x)  # (..., n_mels, frames)
            out = torch.log(mel + self.config.log_eps).transpose(-1, -2).contiguous()
        return out.numpy()
