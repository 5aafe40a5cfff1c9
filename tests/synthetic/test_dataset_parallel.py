"""The synthetic set made by several threads at once is byte for byte the set made by one."""

from __future__ import annotations

from pathlib import Path

from avsed.synthetic.dataset import SynthConfig, make_synthetic_dataset


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_workers_make_the_same_set(tmp_path):
    config = SynthConfig(clips=12, seed=9, still_fraction=0.2, black_fraction=0.2, strong_video_fraction=0.5)
    one = make_synthetic_dataset(tmp_path / "one", config, progress=False, workers=1)
    three = make_synthetic_dataset(tmp_path / "three", config, progress=False, workers=3)
    a, b = _files(tmp_path / "one"), _files(tmp_path / "three")
    assert a == b
    assert sum(name.endswith(".mp4") for name in a) == one.n_videos_available == three.n_videos_available > 0
    assert sum(name.endswith(".wav") for name in a) == 12
