"""The project's ffmpeg: the static binary shipped by imageio-ffmpeg, exposed as an `ffmpeg` on PATH.

yt-dlp refuses partial downloads (`download_ranges`) unless an executable named exactly `ffmpeg`
is on PATH (its `ffmpeg_location` option is not consulted for that check), and imageio's binary is
named `ffmpeg-linux-x86_64-v9.0.2`. So we keep a folder holding an `ffmpeg` symlink to it and put that
folder first on PATH. The folder sits in the user's cache, named after the binary's path, so every process
reuses the same one (a temporary folder per process would be left behind by each run). There is no ffprobe
in imageio-ffmpeg.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
import threading
from functools import lru_cache
from pathlib import Path

_LOCK = threading.Lock()
_BIN_DIR: Path | None = None


@lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """Absolute path of the ffmpeg binary the project uses (imageio-ffmpeg's static build).

    `AVSED_FFMPEG` overrides it (e.g. a system ffmpeg); otherwise imageio-ffmpeg's binary.
    """
    override = os.environ.get("AVSED_FFMPEG")
    if override:
        return override
    import imageio_ffmpeg  # imported lazily: it is only needed where video is handled

    return imageio_ffmpeg.get_ffmpeg_exe()


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "avsed" / "ffmpeg-bin"


def _link_folder(folder: Path, exe: Path) -> Path:
    """folder/ffmpeg -> exe, made atomically (a temporary link renamed into place) so concurrent processes
    never see a half-made entry; an existing link to another binary is replaced."""
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "ffmpeg"
    if link.is_symlink() and Path(os.readlink(link)) == exe:
        return folder
    tmp = folder / f".ffmpeg.{os.getpid()}.{threading.get_ident()}"
    tmp.unlink(missing_ok=True)
    try:
        tmp.symlink_to(exe)
    except OSError:  # file systems without symlinks: a copy works too
        shutil.copy2(exe, tmp)
    os.replace(tmp, link)
    return folder


def ffmpeg_bin_dir() -> Path:
    """A folder whose `ffmpeg` is the project's binary (in the user's cache; reused across processes)."""
    global _BIN_DIR
    with _LOCK:
        if _BIN_DIR is not None and (_BIN_DIR / "ffmpeg").exists():
            return _BIN_DIR
        exe = Path(ffmpeg_exe()).resolve()
        if exe.name == "ffmpeg":
            _BIN_DIR = exe.parent  # already named right: use its own folder
            return _BIN_DIR
        key = hashlib.sha1(str(exe).encode()).hexdigest()[:12]
        try:
            _BIN_DIR = _link_folder(_cache_root() / key, exe)
        except OSError:  # no writable cache (read-only home): a private temporary folder, removed at exit
            folder = Path(tempfile.mkdtemp(prefix="avsed-ffmpeg-"))
            atexit.register(shutil.rmtree, folder, True)
            _BIN_DIR = _link_folder(folder, exe)
        return _BIN_DIR


def ensure_ffmpeg_on_path() -> str:
    """Put the project's `ffmpeg` first on PATH (idempotent, thread-safe); returns the folder."""
    folder = str(ffmpeg_bin_dir())
    with _LOCK:
        parts = os.environ.get("PATH", "").split(os.pathsep)
        if not parts or parts[0] != folder:
            os.environ["PATH"] = os.pathsep.join([folder] + [p for p in parts if p and p != folder])
    return folder
