"""A real Prefect server on 127.0.0.1 (one for the module): deployments served by `avsed serve` and deployed from
the repository's prefect.yaml to a process work pool, `prefect deployment run extract-features/<name>`, the run's
task names and artifacts read back through the API, and a misspelt parameter refused by the server before any run
starts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.request
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import yaml

from avsed.core.store import FeatureStore
from avsed.synthetic.processes import BIN, free_port, stop_group, wait_for  # noqa: F401 (test_paper_pool)
from avsed.synthetic.video_host import VideoServer
from tests.flows.conftest import copy_set, extract_config, prefect_home

# end to end (a Prefect server, deployments, workers): the full suite's, not the fast tier's
pytestmark = pytest.mark.slow


ROOT = Path(__file__).resolve().parents[2]
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture(scope="module")
def prefect_env(tmp_path_factory, prefect_home_template):
    """`prefect server start` on a copy of the session's migrated Prefect home (the server's first start on an empty
    one, migrations and all, is not what this module tests)."""
    tmp_path = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    home = prefect_home(prefect_home_template, tmp_path / "prefect-home")
    env = {**os.environ, "PREFECT_HOME": str(home),
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "1", "PREFECT_RUNNER_POLL_FREQUENCY": "1", "PREFECT_WORKER_QUERY_SECONDS": "1",
           "PREFECT_LOGGING_LEVEL": "WARNING"}
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2).status == 200,
                 120, "prefect server health", server)
        yield env
    finally:
        stop_group(server)
        log.close()


@pytest.fixture(scope="module")
def deployed(prefect_env):
    """The repository's prefect.yaml deployed (`prefect deploy --all`) to its process work pool."""
    env = prefect_env
    pool = subprocess.run([str(BIN / "prefect"), "work-pool", "create", "avsed", "--type", "process"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert pool.returncode == 0, pool.stdout + pool.stderr
    deploy = subprocess.run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    names = {d["name"] for d in api_post(env["PREFECT_API_URL"], "/deployments/filter", {"limit": 50})}
    assert "desed" in names
    flows = {f["id"]: f["name"] for f in api_post(env["PREFECT_API_URL"], "/flows/filter", {"limit": 50})}
    deployments = {(flows[d["flow_id"]], d["name"]): d
                   for d in api_post(env["PREFECT_API_URL"], "/deployments/filter", {"limit": 50})}
    assert {("extract-features", "desed"), ("train", "desed"), ("paper", "desed")} <= set(deployments)
    return deployments


def flow_run_id(output: str) -> str:
    m = re.search(r"UUID:\s*(" + UUID.pattern + ")", output)
    assert m, output
    return m[1]


def test_deployment_run_completes_and_matches_in_process_run(prefect_env, reference_run, tmp_path):
    ref_data, ref_cfg, _ = reference_run
    data = copy_set(ref_data, tmp_path / "data")
    store = tmp_path / "features.zarr"
    env = prefect_env
    serve_log = open(tmp_path / "serve.log", "w")
    serving = subprocess.Popen([str(BIN / "avsed"), "serve", "--name", "ci"], env=env, stdout=serve_log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def deployment_exists() -> bool:  # what `prefect deployment inspect extract-features/ci` asks the API
            return api_get(env["PREFECT_API_URL"], "/deployments/name/extract-features/ci")["name"] == "ci"
        wait_for(deployment_exists, 120, "deployment extract-features/ci", serving)
        with VideoServer(data / "videos") as videos:
            cfg = extract_config(data, store, videos.url_template)
            params = json.dumps({"config": cfg.to_dict()})
            run = subprocess.run([str(BIN / "prefect"), "deployment", "run", "extract-features/ci", "--params", params,
                                  "--watch", "--watch-timeout", "300"],
                                 env=env, capture_output=True, text=True, timeout=360)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "Completed" in run.stdout + run.stderr
    finally:
        stop_group(serving)
        serve_log.close()
    got, want = FeatureStore.open(store), FeatureStore.open(ref_cfg.store)
    assert list(got.clip_ids()) == list(want.clip_ids())
    for name in ("logmel", "openl3", "vgg16", "tce"):
        np.testing.assert_array_equal(got.mask(name), want.mask(name), err_msg=name)
        np.testing.assert_array_equal(got.read_feature(name), want.read_feature(name), err_msg=name)

    # What the run looks like in Prefect, read back through its API: task runs named after what they do (per
    # shard), the GPU tag on the embedding tasks, a progress artifact and the extraction report.
    api = env["PREFECT_API_URL"]
    task_runs, artifacts = run_view(api, flow_run_id(run.stdout))
    names = {t["name"] for t in task_runs}
    shards = sorted({got.shard_of(r) for r in range(got.n_clips)})
    assert {"plan", "statistics", "re-check[0 cached videos]"} <= names
    assert {f"audio[logmel, shard {s}]" for s in shards} <= names
    video_shards = {got.shard_of(r) for r in np.flatnonzero(got.present("openl3"))}
    assert {f"download[shard {s}]" for s in video_shards} <= names
    embeds = [t for t in task_runs if t["name"].startswith("embed[")]
    assert {t["name"] for t in embeds} >= {f"embed[openl3+vgg16+tce, shard {s}]" for s in video_shards}
    assert all("avsed-gpu" in t["tags"] for t in embeds)
    assert all(t["state_type"] == "COMPLETED" for t in task_runs)
    # the flow's window: shards whose tasks ran at overlapping times never exceed shards_in_flight
    spans: dict[int, list[datetime]] = {}
    for t in task_runs:
        m = re.search(r"shard (\d+)\]$", t["name"])
        if m:
            start, end = datetime.fromisoformat(t["start_time"]), datetime.fromisoformat(t["end_time"])
            first, last = spans.get(int(m[1]), [start, end])
            spans[int(m[1])] = [min(first, start), max(last, end)]
    assert len(spans) == len(shards) >= 3
    edges = sorted([(a, 1) for a, _ in spans.values()] + [(b, -1) for _, b in spans.values()], key=lambda e: (e[0], e[1]))
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    assert 1 <= most <= cfg.shards_in_flight == 2
    assert float(artifacts["extraction-progress"]["data"]) == 100.0
    report = artifacts["extraction-report"]["data"]
    assert "| video features computed |" in report and "'openl3': " in report


def test_work_pool_deployment_from_prefect_yaml_runs_on_a_process_worker(prefect_env, deployed, reference_run,
                                                                         tmp_path):
    """`prefect deploy --all` from the repository's prefect.yaml, `prefect worker start --pool avsed --type
    process`, `prefect deployment run extract-features/desed` with a config file and overrides merged key by key."""
    ref_data, ref_cfg, _ = reference_run
    data = copy_set(ref_data, tmp_path / "data")
    store = tmp_path / "features.zarr"
    env = prefect_env
    worker_log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "avsed", "--type", "process"],
                              cwd=tmp_path, env=env, stdout=worker_log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        with VideoServer(data / "videos") as videos:
            cfg = extract_config(data, store, videos.url_template)
            # The file names the host; the run's parameters change the concurrency and the features: a file's
            # download section merged away (a whole-section replace) would send every download to YouTube.
            settings = cfg.to_dict()
            settings["download"] = {"url_template": videos.url_template, "retries": 1}
            (tmp_path / "extract.yaml").write_text(yaml.safe_dump(settings))
            params = json.dumps({"config_file": str(tmp_path / "extract.yaml"),
                                 "config": {"download": {"concurrency": 2}, "features": ["logmel", "openl3"]}})
            run = subprocess.run([str(BIN / "prefect"), "deployment", "run", "extract-features/desed", "--params",
                                  params, "--watch", "--watch-timeout", "420"],
                                 env=env, capture_output=True, text=True, timeout=480)
        assert run.returncode == 0, run.stdout + run.stderr + (tmp_path / "worker.log").read_text()[-3000:]
        assert "Completed" in run.stdout + run.stderr
    finally:
        stop_group(worker)
        worker_log.close()
    got, want = FeatureStore.open(store), FeatureStore.open(ref_cfg.store)
    assert got.feature_names() == ["logmel", "openl3"] or sorted(got.feature_names()) == ["logmel", "openl3"]
    for name in ("logmel", "openl3"):
        np.testing.assert_array_equal(got.mask(name), want.mask(name), err_msg=name)
        np.testing.assert_array_equal(got.read_feature(name), want.read_feature(name), err_msg=name)

    api = env["PREFECT_API_URL"]
    run_id = flow_run_id(run.stdout)
    flow_run = api_get(api, f"/flow_runs/{run_id}")
    assert flow_run["deployment_id"] == deployed[("extract-features", "desed")]["id"]
    assert flow_run["work_pool_name"] == "avsed" and flow_run["state_type"] == "COMPLETED"
    task_runs, artifacts = run_view(api, run_id)
    names = {t["name"] for t in task_runs}
    shards = sorted({got.shard_of(r) for r in range(got.n_clips)})
    video_shards = {got.shard_of(r) for r in np.flatnonzero(got.present("openl3"))}
    assert {"plan", "statistics"} <= names and {f"audio[logmel, shard {s}]" for s in shards} <= names
    assert {f"download[shard {s}]" for s in video_shards} | {f"embed[openl3, shard {s}]" for s in video_shards} <= names
    assert all(t["state_type"] == "COMPLETED" for t in task_runs)
    assert {"extraction-progress", "audio-progress", "video-progress", "extraction-report"} <= set(artifacts)
    assert all(float(artifacts[k]["data"]) == 100.0 for k in ("extraction-progress", "audio-progress",
                                                               "video-progress"))
    report = artifacts["extraction-report"]["data"]
    assert f"'openl3': {int(got.present('openl3').sum())}" in report and "vgg16" not in report


@pytest.mark.parametrize("params, where", [
    ({"config": {"featurs": ["logmel"]}}, "featurs"),
    ({"config": {"download": {"concurency": 2}}}, "concurency"),
    ({"config": {"frame_size": "large"}}, "large"),
    ({"config_fle": "extract.yaml"}, "config_fle"),
])
def test_the_server_refuses_a_misspelt_parameter_before_the_run_starts(prefect_env, deployed, params, where):
    env = prefect_env
    before = api_post(env["PREFECT_API_URL"], "/flow_runs/filter", {"limit": 200})
    run = subprocess.run([str(BIN / "prefect"), "deployment", "run", "extract-features/desed", "--params",
                          json.dumps(params)], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0, run.stdout + run.stderr
    assert where in run.stdout + run.stderr
    # no flow run was created: nothing started, nothing for a worker to pick up
    assert len(api_post(env["PREFECT_API_URL"], "/flow_runs/filter", {"limit": 200})) == len(before)


def run_view(api: str, run_id: str) -> tuple[list[dict], dict[str, dict]]:
    """A flow run's task runs and its artifacts by key, read through the API."""
    task_runs = api_post(api, "/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}, "limit": 200})
    artifacts = {a["key"]: a for a in api_post(api, "/artifacts/filter",
                                                {"artifacts": {"flow_run_id": {"any_": [run_id]}}, "limit": 50})
                 if a.get("key")}
    return task_runs, artifacts


def api_get(api: str, path: str) -> dict:
    with urllib.request.urlopen(api + path, timeout=30) as response:
        return json.loads(response.read())


def api_post(api: str, path: str, body: dict) -> list[dict]:
    request = urllib.request.Request(api + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())
