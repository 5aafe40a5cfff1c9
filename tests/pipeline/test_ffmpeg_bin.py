"""The `ffmpeg` folder put on PATH is one folder in the user's cache, shared by processes, and nothing is left
behind in the temporary directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SNIPPET = ("import os, shutil; from pipeline.ffmpeg_bin import ensure_ffmpeg_on_path as e; f = e(); "
           "print(f); assert shutil.which('ffmpeg') == os.path.join(f, 'ffmpeg')")


def _run(env) -> str:
    out = subprocess.run([sys.executable, "-c", SNIPPET], env=env, capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    return out.stdout.strip()


def test_processes_share_one_cached_folder_and_leave_no_temporary_ones(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "TMPDIR": str(tmp)}
    env.pop("AVSED_FFMPEG", None)
    first, second = _run(env), _run(env)
    assert first == second
    assert Path(first).is_relative_to(tmp_path / "cache")
    link = Path(first) / "ffmpeg"
    assert os.access(link, os.X_OK)
    assert list(tmp.iterdir()) == []


def test_an_unwritable_cache_falls_back_to_a_temporary_folder_removed_at_exit(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")  # the cache root cannot be created under a file
    env = {**os.environ, "XDG_CACHE_HOME": str(blocker), "TMPDIR": str(tmp)}
    env.pop("AVSED_FFMPEG", None)
    folder = Path(_run(env))
    assert folder.is_relative_to(tmp)
    assert not folder.exists()
