"""Flow runs in the avsed process, as `avsed extract` and `avsed train --engine prefect` start them: no traceback
from Prefect's own machinery on a fresh PREFECT_HOME, no API server left behind when the process is killed
outright, and the `train` flow merging a config file and overrides key by key (a conformer stays a conformer)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from avsed.synthetic.video_host import VideoServer
from tests.flows.conftest import copy_set, prefect_home
from tests.pipeline.extracted_store import FRAME_SIZE
from tests.training.conftest import synthetic_store  # noqa: F401 - the session fixture, shared
from training.checkpoint import CHECKPOINT

# end to end (the CLI in a process of its own with a Prefect API server): the full suite's, not the fast tier's
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SERVER_MODULE = "prefect.server.api.server"


def fresh_env(tmp_path: Path, template: Path | None = None) -> dict[str, str]:
    """A new PREFECT_HOME (a copy of `template`, whose database is migrated already, when given) and no API: the
    run starts its own local server. Nothing else is set, so the run's own defaults (flows.in_process_defaults) are
    what is tested."""
    if template is not None:
        prefect_home(template, tmp_path / "prefect-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.pop("DO_NOT_TRACK", None)
    env.update({"PREFECT_HOME": str(tmp_path / "prefect-home"), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    return env


def extract_argv(data: Path, store: Path, features: str, url_template: str) -> list[str]:
    return [sys.executable, "-m", "avsed.cli", "extract", "--metadata", str(data / "metadata"), "--audio-dir",
            str(data / "audio"), "--store", str(store), "--features", features, "--url-template", url_template,
            "--allow-random-weights", "--frame-size", str(FRAME_SIZE), "--set",
            f"extractor_configs.openl3.input_size={FRAME_SIZE}",
            "--decode-workers", "1", "--json"]


def test_in_process_extract_on_a_fresh_prefect_home_prints_no_traceback(synth_set, tmp_path):
    data = copy_set(synth_set, tmp_path / "data")
    run = subprocess.run(extract_argv(data, tmp_path / "features.zarr", "logmel", "http://127.0.0.1:9/{youtube_id}"),
                         cwd=ROOT, env=fresh_env(tmp_path), capture_output=True, text=True, timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    assert "Traceback" not in output and "database is locked" not in output, output[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1])["audio_computed"] == {"logmel": 12}


def children_of(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the processes whose parent is `pid`."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append((int(entry.name), cmdline))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_killed_in_process_run_leaves_no_prefect_server(synth_set, prefect_home_template, tmp_path):
    data = copy_set(synth_set, tmp_path / "data")
    # every video answer waits 5 s: the run is still downloading when it is killed
    ids = [p.stem for p in (data / "videos").glob("*.mp4")]
    (data / "videos" / "answers.json").write_text(json.dumps({i: [{"delay_seconds": 5}] * 3 for i in ids}))
    with VideoServer(data / "videos") as videos:
        run = subprocess.Popen(extract_argv(data, tmp_path / "features.zarr", "logmel,openl3", videos.url_template),
                               cwd=ROOT, env=fresh_env(tmp_path, prefect_home_template), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        try:
            servers: list[int] = []
            deadline = time.monotonic() + 300
            while not servers and time.monotonic() < deadline and run.poll() is None:
                servers = [pid for pid, cmd in children_of(run.pid) if SERVER_MODULE in cmd]
                time.sleep(0.2)
            assert servers, "the run started no Prefect API server of its own"
            # killed once its flow runs (the first video request) or, at the latest, 120 s on
            deadline = time.monotonic() + 120
            while not sum(videos.requests().values()) and time.monotonic() < deadline and run.poll() is None:
                time.sleep(0.2)
            assert run.poll() is None, "the run ended before it could be killed"
        finally:
            run.send_signal(signal.SIGKILL)
            run.wait(timeout=30)
        deadline = time.monotonic() + 60
        while any(alive(pid) for pid in servers) and time.monotonic() < deadline:
            time.sleep(0.2)
        survivors = [pid for pid in servers if alive(pid)]
        for pid in survivors:  # leave nothing behind even when the test fails
            os.kill(pid, signal.SIGTERM)
        assert not survivors, f"Prefect API server(s) {survivors} outlived the killed run"


SCRIPT = """
import json, sys
from flows import in_process_defaults
in_process_defaults()
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId
from flows.train import train_flow

state = train_flow(**json.loads(sys.argv[1]), return_state=True)
results = state.result()
with get_client(sync_client=True) as client:
    run_id = state.state_details.flow_run_id
    tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
print("RESULT " + json.dumps({"results": results, "tasks": [t.name for t in tasks],
                              "artifacts": {a.key: a.data for a in artifacts if a.key}}))
"""


def test_train_flow_keeps_the_files_conformer_under_a_d_model_override(synthetic_store, prefect_home_template,  # noqa: F811
                                                                       tmp_path):
    """`config_file: configs/conformer_bi_openl3.yaml` with `config: {"model": {"d_model": 32}}` trains a
    conformer of width 32 (a section replaced whole would train the default transformer)."""
    config = {"model": {"d_model": 32, "heads": 2, "d_head": 8, "ff_dim": 32, "cnn": {"filters": [4, 4, 8, 8, 8, 8, 8]}},
              "batch_strong": 2, "batch_weak": 2, "batch_unlabelled": 2, "epochs": 1, "steps_per_epoch": 2,
              "device": "cpu", "progress": False, "log_every": 1}
    args = {"store": str(synthetic_store), "out_dir": str(tmp_path / "run"), "config": config,
            "config_file": str(ROOT / "configs" / "conformer_bi_openl3.yaml")}
    run = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(args)], cwd=ROOT,
                         env=fresh_env(tmp_path, prefect_home_template),
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Traceback" not in run.stdout + run.stderr
    report = json.loads(next(x for x in run.stdout.splitlines() if x.startswith("RESULT "))[7:])
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model"]["architecture"] == "conformer" and saved["model"]["d_model"] == 32
    assert saved["encoders"] == ["logmel", "openl3"] and saved["interpolation_weights"] == [0.75, 0.25]
    # the trained network itself: conformer modules (depthwise convolution, relative positions), 32 wide
    checkpoint = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=False)
    state = checkpoint["model"]
    assert any(".conv.depthwise." in k for k in state), sorted(state)[:20]
    assert not any(k.startswith("encoder_positions") for k in state)  # a transformer's absolute positions
    widths = {tuple(v.shape) for k, v in state.items() if k.endswith("norm_attn.weight")}
    assert widths == {(32,)}
    assert report["tasks"] == ["train-seeds[conformer logmel+openl3, seeds 0]"]
    summary = report["artifacts"]["training-seed0"]
    assert "| model | conformer, encoders logmel, openl3, d_model 32 |" in summary and "| steps | 2 of 2" in summary
    assert float(report["artifacts"]["training-progress"]) == 100.0
