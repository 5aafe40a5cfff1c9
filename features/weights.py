"""Pretrained weight files of the visual embeddings: where they are looked for, their checksum, and the errors
raised when a file is absent, unreadable, or does not fit the network (each error names the file and the layer).

Nothing is ever downloaded: a missing file is an error that says which file is expected and every place searched.
Search order for a file name: the path in the extractor's config, then `$AVSED_WEIGHTS_DIR`, then torch's hub
cache (`torch.hub.get_dir()/checkpoints`, i.e. `$TORCH_HOME/hub/checkpoints`, where torchvision keeps its weights).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from avsed.core.errors import AvsedError

WEIGHTS_DIR_ENV = "AVSED_WEIGHTS_DIR"
RANDOM_WEIGHTS = "random"


class WeightsError(AvsedError):
    """Any problem with a pretrained weights file: the user fixes it (one line, never retried)."""


class MissingWeightsError(WeightsError, FileNotFoundError):
    """The expected weights file is in none of the places searched."""

    def __init__(self, feature: str, file_name: str, searched: list[Path]):
        self.feature, self.file_name, self.searched = feature, file_name, searched
        places = "; ".join(str(p) for p in searched) or "no place configured"
        super().__init__(
            f"{feature}: pretrained weights file {file_name!r} not found (looked for: {places}); put the file in "
            f"one of these places, set the extractor's `weights_path`, or pass --allow-random-weights (tests and "
            f"the demo only: the embeddings are then meaningless)"
        )


class WeightsFormatError(WeightsError):
    """The file cannot be read as the expected format (not HDF5, not a torch checkpoint, no state dict...)."""


class WeightsMismatchError(WeightsError):
    """The file's layers do not fit the network: missing, unexpected, or wrongly shaped; `layer` names it."""

    def __init__(self, path: Path | str, layer: str, cause: str):
        self.path, self.layer, self.cause = Path(path), layer, cause
        super().__init__(f"{path}: layer {layer!r}: {cause}")


def search_dirs() -> list[Path]:
    """Folders searched for a weights file name, in order."""
    dirs: list[Path] = []
    if os.environ.get(WEIGHTS_DIR_ENV):
        dirs.append(Path(os.environ[WEIGHTS_DIR_ENV]).expanduser())
    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    return dirs


def locate_weights(feature: str, configured: str | os.PathLike | None, file_name: str,
                   dirs: Iterable[Path] | None = None) -> Path:
    """The weights file to load: the configured path if given (it must exist), else `file_name` in `search_dirs()`."""
    if configured:
        path = Path(configured).expanduser()
        if path.is_file():
            return path
        raise MissingWeightsError(feature, path.name, [path])
    searched = [d / file_name for d in (search_dirs() if dirs is None else dirs)]
    for path in searched:
        if path.is_file():
            return path
    raise MissingWeightsError(feature, file_name, searched)


_SHA256_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, cached per (path, size, mtime) since weight files are hundreds of MB."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA256_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _SHA256_CACHE[key] = h.hexdigest()
    return _SHA256_CACHE[key]


def load_torch_checkpoint(path: str | os.PathLike) -> Any:
    """`torch.load` on CPU with `weights_only=True` (no pickled code runs), errors naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError... for a bad file
        raise WeightsFormatError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc


def check_state_dict(path: str | os.PathLike, expected: Mapping[str, torch.Size | tuple[int, ...]],
                     state: Mapping[str, torch.Tensor]) -> None:
    """Refuse a state dict whose keys or shapes differ from the network's; the error names the first bad key.

    Keys are checked in the network's order so that the reported layer is the earliest one that does not fit.
    """
    for key, shape in expected.items():
        if key not in state:
            raise WeightsMismatchError(path, key, "missing from the file")
        got = tuple(state[key].shape)
        if got != tuple(shape):
            raise WeightsMismatchError(path, key, f"shape {got} in the file, network expects {tuple(shape)}")
    for key in state:
        if key not in expected:
            raise WeightsMismatchError(path, key, "in the file but not in the network (unexpected layer)")
