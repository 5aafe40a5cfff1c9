"""Issue 24: a disk that fills up or turns read-only, and a store path that is a file, end `avsed extract` with one
line (exit 2, no traceback); what was written stays consistent, the partial files such a run leaves are cleaned up
by the next run, and a rerun on a healthy disk gives the store an uninterrupted run gives.

The faults are injected at the storage seams (`avsed.core.store._zarr_store`, `pipeline.ledger.Ledger.record_many`),
as a full or read-only disk answers there: OSError(ENOSPC / EROFS), sqlite's "database or disk is full".
"""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest

from avsed.cli import main
from avsed.core import store as store_module
from pipeline.ledger import Ledger
from tests.flows.faults import assert_same_store, store_contents, write_tiny_desed

WEAK = {"Yaaaaaaaaaa1_0.000_1.000.wav": "Speech", "Yaaaaaaaaaa2_0.000_1.000.wav": "Dog"}
STRONG = {"1.wav": [(0.1, 0.5, "Cat")]}
VALIDATION = {"Ybbbbbbbbbb1_0.000_1.000.wav": [(0.2, 0.6, "Dog")]}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_tiny_desed(tmp_path_factory.mktemp("tiny"), WEAK, STRONG, VALIDATION)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> dict:
    store = tmp_path_factory.mktemp("reference") / "features.zarr"
    assert _extract(data, store)[0] == 0
    return store_contents(store)


def _extract(data: Path, store: Path) -> tuple[int, str]:
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["extract", "--engine", "plain", "--json", "--features", "logmel", "--metadata",
                   str(data / "metadata"), "--audio-dir", str(data / "audio"), "--store", str(store)])
    return rc, err.getvalue()


def _one_line(err: str, *words: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


def _failing_store_writes(monkeypatch, code: int, after: int) -> None:
    """The store's chunk writes fail with `code` once `after` of them went through (the disk fills up mid-run)."""
    real = store_module._zarr_store
    count = {"n": 0}

    class Failing(store_module.LocalStore):
        async def set(self, key, value):
            if "/c/" in key:  # a chunk of rows: what grows with the data
                count["n"] += 1
                if count["n"] > after:
                    raise OSError(code, "injected", str(Path(str(self.root)) / key))
            await super().set(key, value)

    monkeypatch.setattr(store_module, "_zarr_store",
                        lambda path, read_only=False: Failing(str(path), read_only=read_only))
    assert real is not None


@pytest.mark.parametrize("code,words", [(errno.ENOSPC, ("no space left",)), (errno.EROFS, ("read-only",))],
                         ids=["disk-full", "read-only"])
def test_a_disk_that_fails_mid_run_ends_in_one_line_and_a_rerun_completes(data, reference, tmp_path, monkeypatch,
                                                                           code, words):
    store = tmp_path / "features.zarr"
    _failing_store_writes(monkeypatch, code, after=1)
    rc, err = _extract(data, store)
    assert rc == 2
    _one_line(err, "avsed extract: error:", *words, str(store))
    monkeypatch.undo()
    rc, err = _extract(data, store)
    assert rc == 0, err
    assert_same_store(store_contents(store), reference, "rerun after the disk was fixed")


@pytest.mark.parametrize("sqlite_message,words", [("database or disk is full", ("no space left", "ledger")),
                                                   ("attempt to write a readonly database", ("ledger is read-only",))],
                         ids=["disk-full", "read-only"])
def test_a_full_disk_while_rebuilding_the_ledger_leaves_nothing_and_the_next_run_rebuilds_it(data, reference,
                                                                                           tmp_path, monkeypatch,
                                                                                           sqlite_message, words):
    store = tmp_path / "features.zarr"
    assert _extract(data, store)[0] == 0
    ledger = Ledger.path_for_store(store)
    ledger.unlink()  # lost: the next run rebuilds it from the store, and the disk is full then

    def full(self, *a, **k):
        raise sqlite3.OperationalError(sqlite_message)

    monkeypatch.setattr(Ledger, "record_many", full)
    rc, err = _extract(data, store)
    assert rc == 2
    _one_line(err, *words)
    assert list(ledger.parent.glob(f"{ledger.name}.rebuilding-*")) == []
    monkeypatch.undo()
    # a killed rebuild's leftovers and a killed download's empty partial files are swept by the next run
    (ledger.parent / f"{ledger.name}.rebuilding-999999").write_bytes(b"")
    videos = Path(f"{store}.videos")
    videos.mkdir(exist_ok=True)
    (videos / "Yaaaaaaaaaa1_0.000_1.000.mp4.part").write_bytes(b"")
    rc, err = _extract(data, store)
    assert rc == 0, err
    assert ledger.exists() and list(ledger.parent.glob(f"{ledger.name}.rebuilding-*")) == []
    assert list(videos.glob("*.part")) == []
    assert_same_store(store_contents(store), reference, "rerun after the ledger's disk was fixed")


def test_a_store_path_that_is_a_file_is_refused_in_one_line(data, tmp_path):
    store = tmp_path / "features.zarr"
    store.write_text("not a store")
    rc, err = _extract(data, store)
    assert rc == 2
    _one_line(err, str(store), "is a file")
    assert store.read_text() == "not a store"
