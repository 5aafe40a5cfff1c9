"""Issue 24: Ctrl-C during `avsed extract`, with either engine (plain, and the Prefect flow in-process). The first SIGINT stops taking new clips, lets what is in
hand be written, records nothing wrongly, prints one line and exits 130; a second ends the run at once, cleanly.
Either way every process of the run (decode workers, ffmpeg) is gone afterwards, and a rerun completes the store.

The run is started as a terminal would (its own process group, SIGINT at its default action: a background process
of a non-interactive shell would ignore it) and the SIGINT goes to the whole group, as Ctrl-C does.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pipeline.extract import run_extraction
from pipeline.ledger import Ledger
from avsed.synthetic.video_host import ANSWERS_FILE, ANSWERS_STATE_FILE, VideoServer, VideoServerProcess
from avsed.core.store import FeatureStore
from avsed.synthetic.dataset import SynthConfig, make_synthetic_dataset
from tests.flows.conftest import prefect_home
from tests.pipeline.extracted_store import FRAME_SIZE, small_extract_config

REPO = Path(__file__).resolve().parents[2]
SYNTH = SynthConfig(clips=10, seed=7, missing_fraction=0.0, still_fraction=0.0, black_fraction=0.0,
                    short_clip_fraction=0.0, offset_fraction=0.0)
VIDEO = "openl3"


def _video_ids(data: Path) -> dict[str, str]:
    with (data / "truth/videos.tsv").open(newline="", encoding="utf-8") as fh:
        return {r["clip_id"]: r["youtube_id"] for r in csv.DictReader(fh, delimiter="\t")
                if (data / "videos" / f"{r['youtube_id']}.mp4").is_file()}


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_extract(data: Path, store: Path, template: str, tmp: Path, engine: str, home: Path) -> subprocess.Popen:
    config = {"features": ["logmel", VIDEO], "allow_random_weights": True, "frame_size": FRAME_SIZE,
              "batch_clips": 4, "decode_workers": 1, "extractor_configs": {VIDEO: {"input_size": FRAME_SIZE}},
              "download": {"url_template": template, "retries": 0, "fragment_retries": 0, "socket_timeout": 10.0,
                           "concurrency": 2}}
    (tmp / "extract.json").write_text(json.dumps(config))
    # The Prefect engine without an API starts its own temporary API server (a child of the run)
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PREFECT_API_URL", None)
    return subprocess.Popen(
        [sys.executable, "-m", "avsed.cli", "extract", "--engine", engine, "--json", "--config",
         str(tmp / "extract.json"), "--metadata", str(data / "metadata"), "--audio-dir", str(data / "audio"),
         "--store", str(store)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=_default_sigint)


def _group_gone(pgid: int, seconds: float = 15.0) -> bool:
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def synth_signals(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("signals") / "data"
    make_synthetic_dataset(data, SYNTH, progress=False)
    return data


@pytest.fixture()
def slow_host(synth_signals, prefect_home_template, tmp_path):
    """A synthetic set whose host answers every request after a second (the run is downloading when Ctrl-C comes),
    and a Prefect home for the run (its database migrated already: the server's first start is not the subject)."""
    data = tmp_path / "data"
    shutil.copytree(synth_signals, data)
    prefect_home(prefect_home_template, tmp_path / "prefect-home")
    ids = _video_ids(data)
    (data / "videos" / ANSWERS_FILE).write_text(json.dumps({v: [{"delay_seconds": 1.0}] for v in ids.values()}))
    return data, ids


def _interrupt(data: Path, store: Path, tmp: Path, times: int, engine: str) -> tuple[int, str]:
    with VideoServerProcess(data / "videos") as server:
        proc = _start_extract(data, store, server.url_template, tmp, engine, tmp / "prefect-home")
        children: list[psutil.Process] = []
        try:
            until = time.monotonic() + 240
            while sum(server.requests().values()) < 3 and proc.poll() is None and time.monotonic() < until:
                time.sleep(0.1)
            assert proc.poll() is None, proc.communicate()
            # every process the run started by now (decode workers, ffmpeg, the Prefect engine's API server, which
            # sits in a session of its own so that the Ctrl-C does not reach it before the flow has shut down)
            children = psutil.Process(proc.pid).children(recursive=True)
            for i in range(times):
                os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
                time.sleep(0.3)
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        assert _group_gone(proc.pid), "a process of the run outlived it"
        _, alive = psutil.wait_procs(children, timeout=15)
        assert alive == [], f"processes of the run outlived it: {alive}"
    return proc.returncode, err


def _check_nothing_wrong(data: Path, store: Path, ids: dict[str, str]) -> None:
    """Every video exists and the host is only slow: nothing may be recorded missing or failed, and every stored
    video row belongs to a clip recorded available."""
    with Ledger(Ledger.path_for_store(store), read_only=True) as ledger:
        entries = ledger.entries()
    wrong = {cid: (e.status, e.reason, e.message) for cid, e in entries.items()
             if cid in ids and e.status != "available"}
    assert wrong == {}
    present = dict(zip(FeatureStore.open(store).clip_ids(), FeatureStore.open(store).present(VIDEO)))
    assert all(entries[cid].status == "available" for cid in ids if present.get(cid))


def _rerun_completes(data: Path, store: Path, ids: dict[str, str]) -> None:
    (data / "videos" / ANSWERS_FILE).unlink()
    (data / "videos" / ANSWERS_STATE_FILE).unlink(missing_ok=True)
    with VideoServer(data / "videos") as server:
        cfg = small_extract_config(data, store, server.url_template, decode_workers=1)
        run_extraction(cfg, progress=False)
    with Ledger(cfg.ledger_path, read_only=True) as ledger:
        entries = ledger.entries()
    s = FeatureStore.open(store)
    present = dict(zip(s.clip_ids(), s.present(VIDEO)))
    assert all(entries[cid].status == "available" and present[cid] for cid in ids)
    assert list(cfg.video_path.glob("*.part")) == []


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["plain", "prefect"])
def test_first_ctrl_c_writes_what_is_in_hand_and_exits_130_with_one_line(slow_host, tmp_path, engine):
    data, ids = slow_host
    store = tmp_path / "features.zarr"
    rc, err = _interrupt(data, store, tmp_path, times=1, engine=engine)
    assert rc == 130, err
    lines = [ln for ln in err.splitlines() if ln.strip() and "%|" not in ln]  # (tqdm bars are off with --json)
    ours = [ln for ln in lines if "interrupted: writing the clips in hand" in ln]
    assert len(ours) == 1, err
    if engine == "plain":
        assert lines == ours, err
    else:  # Prefect's own log lines besides ours; its failure line is one line too, without a traceback
        assert any("ExtractionInterrupted" in ln or "interrupted: the clips in hand" in ln for ln in lines), err
    assert "Traceback" not in err and "terminate called" not in err
    _check_nothing_wrong(data, store, ids)
    _rerun_completes(data, store, ids)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["plain", "prefect"])
def test_a_second_ctrl_c_ends_at_once_cleanly(slow_host, tmp_path, engine):
    data, ids = slow_host
    store = tmp_path / "features.zarr"
    rc, err = _interrupt(data, store, tmp_path, times=2, engine=engine)
    # 130 from the run's handler; or, when the second Ctrl-C lands while the interpreter is already exiting (it
    # restores SIGINT's default action then), death by SIGINT, which a shell reports as 130 too
    assert rc in (130, -signal.SIGINT), err
    assert "Traceback" not in err and "terminate called" not in err, err
    _check_nothing_wrong(data, store, ids)
    _rerun_completes(data, store, ids)
