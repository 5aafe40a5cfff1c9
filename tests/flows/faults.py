"""Fault injection for store tests: run an extraction in a child process that dies (os._exit, as SIGKILL would
leave it) right after its k-th write to the store, or whose every store write is slowed down.

Every write the store makes goes through four seams of `avsed.core.store` (`_zarr_store`, `_write_json_atomic`,
`_remove_file`, `_rename`); the child wraps them. The children fork from a forkserver that has imported the
extraction once, so each costs milliseconds instead of an interpreter start with torch.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

KILLED = 137
_context = None


def context():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        # Everything an extraction imports, so a child starts working at once (torchvision alone takes seconds).
        _context.set_forkserver_preload(["pipeline.extract", "tests.flows.faults", "features.logmel", "features.openl3",
                                         "features.vgg16", "features.tce"])
    return _context


class _Writes:
    """Counts the store's writes in this process and acts after each one."""

    def __init__(self, kill_after: int | None, delay: float, count_file: str | None):
        self.n = 0
        self.kill_after = kill_after
        self.delay = delay
        self.count_file = count_file
        self.lock = threading.Lock()

    def done(self, what: str) -> None:
        with self.lock:
            self.n += 1
            if self.count_file:
                with open(self.count_file, "a") as fh:
                    fh.write(what + "\n")
            if self.kill_after is not None and self.n >= self.kill_after:
                os._exit(KILLED)
        if self.delay:
            time.sleep(self.delay)


def install(kill_after: int | None = None, delay: float = 0.0, count_file: str | None = None) -> _Writes:
    """Wrap the store's write seams in this process."""
    from avsed.core import store as store_module

    writes = _Writes(kill_after, delay, count_file)

    class HookedStore(store_module.LocalStore):
        async def set(self, key, value):
            await super().set(key, value)
            writes.done(f"set {self.root.name}/{key}")

        async def delete(self, key):
            await super().delete(key)
            writes.done(f"delete {self.root.name}/{key}")

    real_json, real_remove, real_rename = (store_module._write_json_atomic, store_module._remove_file,
                                           store_module._rename)

    def write_json(path, obj):
        real_json(path, obj)
        writes.done(f"journal {Path(path).name}")

    def remove(path):
        existed = Path(path).exists()
        real_remove(path)
        if existed:
            writes.done(f"remove {Path(path).name}")

    def rename(src, dst):
        real_rename(src, dst)
        writes.done(f"rename {Path(dst).name}")

    store_module._zarr_store = lambda path, read_only=False: HookedStore(str(path), read_only=read_only)
    store_module._write_json_atomic = write_json
    store_module._remove_file = remove
    store_module._rename = rename
    return writes


def _child(config_dict: dict, kill_after: int | None, delay: float, count_file: str | None, result_file: str) -> None:
    import torch

    torch.set_num_threads(1)
    from avsed.core.errors import AvsedError
    from pipeline.extract import ExtractConfig, run_extraction

    install(kill_after, delay, count_file)
    try:
        run_extraction(ExtractConfig.from_dict(config_dict), progress=False)
    except AvsedError as exc:
        Path(result_file).write_text(f"refused: {exc}")
        os._exit(3)
    Path(result_file).write_text("done")
    os._exit(0)


def run_child(config_dict: dict, tmp: Path, kill_after: int | None = None, delay: float = 0.0,
              count_file: Path | None = None, start: bool = True):
    """Start (and by default wait for) one extraction in a forked child; returns (exit code, result text)."""
    result = tmp / f"result-{os.urandom(4).hex()}.txt"
    proc = context().Process(target=_child, args=(config_dict, kill_after, delay,
                                                  str(count_file) if count_file else None, str(result)))
    proc.start()
    if not start:
        return proc, result
    proc.join(300)
    if proc.is_alive():
        proc.kill()
        raise AssertionError("the extraction child did not finish in 300 s")
    return proc.exitcode, result.read_text() if result.exists() else ""


def _event_child(config_dict: dict, event: str, k: int) -> None:
    from pipeline.extract import ExtractConfig, run_extraction

    seen = []

    def observer(name, details):
        # `written` counts the video stage's shard writes only (log-mel shards are written before the videos start)
        if name == event and (name != "written" or details["stage"].startswith("video")):
            seen.append(name)
            if len(seen) >= k:
                os._exit(KILLED)  # as abrupt as SIGKILL: no cleanup, no flush

    run_extraction(ExtractConfig.from_dict(config_dict), progress=False, observer=observer)
    os._exit(0)


def run_killed_at_event(config_dict: dict, event: str, k: int) -> int:
    """Run one extraction in a forked child (torch at its default threads, as in a new interpreter) that dies like a
    SIGKILL at the k-th `event` its observer sees; returns the child's exit code."""
    proc = context().Process(target=_event_child, args=(config_dict, event, k))
    proc.start()
    proc.join(600)
    if proc.is_alive():
        proc.kill()
        raise AssertionError("the extraction child did not finish in 600 s")
    return proc.exitcode


# --- a tiny DESED-shaped data set: fast enough to run an extraction per write -------------------------------

def write_tiny_desed(root: Path, weak: dict[str, str], strong: dict[str, list[tuple[float, float, str]]],
                     validation: dict[str, list[tuple[float, float, str]]], seed: int = 0) -> Path:
    """metadata/ and audio/ as DESED publishes them, with 1 s noise clips (audio is all these tests need)."""
    rng = np.random.default_rng(seed)
    meta, audio = root / "metadata", root / "audio"
    files = {
        "train/weak.tsv": ("filename\tevent_labels", [f"{n}\t{labels}" for n, labels in weak.items()], "train/weak"),
        "train/unlabel_in_domain.tsv": ("filename", [], "train/unlabel_in_domain"),
        "train/synthetic20/soundscapes.tsv": ("filename\tonset\toffset\tevent_label",
                                              [f"{n}\t{a}\t{b}\t{c}" for n, evs in strong.items() for a, b, c in evs],
                                              "train/synthetic20/soundscapes"),
        "validation/validation.tsv": ("filename\tonset\toffset\tevent_label",
                                      [f"{n}\t{a}\t{b}\t{c}" for n, evs in validation.items() for a, b, c in evs],
                                      "validation"),
        "eval/public.tsv": ("filename\tonset\toffset\tevent_label", [], "eval/public"),
    }
    for rel, (header, lines, audio_dir) in files.items():
        (meta / rel).parent.mkdir(parents=True, exist_ok=True)
        (meta / rel).write_text("\n".join([header, *lines]) + "\n")
        (audio / audio_dir).mkdir(parents=True, exist_ok=True)
        for line in lines:
            name = line.split("\t")[0]
            if not (audio / audio_dir / name).exists():
                sf.write(audio / audio_dir / name, rng.normal(0, 0.1, 16000).astype(np.float32), 16000)
    return root


def store_contents(store_path: Path) -> dict:
    """Everything a reader can see: root attributes, and every array's attributes and values."""
    import zarr

    group = zarr.open_group(str(store_path), mode="r", use_consolidated=False)
    out = {"attrs": dict(group.attrs)}
    for name, arr in group.arrays():
        out[name] = (dict(arr.attrs), np.asarray(arr[:]))
    return out


def assert_same_store(got: dict, want: dict, context: str = "") -> None:
    assert got.keys() == want.keys(), f"{context}: arrays differ: {sorted(set(got) ^ set(want))}"
    assert got["attrs"] == want["attrs"], context
    for name in want:
        if name == "attrs":
            continue
        (attrs_g, data_g), (attrs_w, data_w) = got[name], want[name]
        assert attrs_g == attrs_w, f"{context}: attributes of {name}"
        np.testing.assert_array_equal(data_g, data_w, err_msg=f"{context}: {name}")


def fresh_copy(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst
