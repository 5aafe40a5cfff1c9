"""The `train` Prefect flow run through Prefect (a temporary API server in a fresh process): a config file
merged key by key with overrides, seeds trained together in one task, one run directory per seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from training.checkpoint import CHECKPOINT
from training.config import TrainConfig, merge_settings
from tests.flows.conftest import prefect_home, prefect_home_template  # noqa: F401 - the session fixture, shared

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, sys
from flows import in_process_defaults
in_process_defaults()
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from flows.train import train_flow

args = json.loads(sys.argv[1])
state = train_flow(**args, return_state=True)
results = state.result()
with get_client(sync_client=True) as client:
    flow_run = client.read_flow_run(state.state_details.flow_run_id)
    tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
print("RESULT " + json.dumps({"state": state.type.value, "results": results, "parameters": flow_run.parameters,
                              "tasks": [t.name for t in tasks]}))
"""


def test_merge_settings_is_key_by_key():
    base = TrainConfig.load(ROOT / "configs" / "conformer_bi_openl3.yaml").to_dict()
    merged = TrainConfig.from_dict(merge_settings(base, {"model": {"d_model": 32, "cnn": {"dropout": 0.0}}}))
    assert merged.model.architecture == "conformer" and merged.model.d_model == 32
    assert merged.model.cnn.dropout == 0.0 and merged.model.cnn.filters == [16, 32, 64, 128, 128, 128, 128]
    assert merged.interpolation_weights == [0.75, 0.25]


@pytest.mark.slow  # end to end: the flow through a temporary Prefect server in a fresh process
def test_train_flow_through_prefect_trains_the_seeds_together(tmp_path, synthetic_store,
                                                              prefect_home_template):  # noqa: F811
    overrides = {"model": {"d_model": 8, "heads": 2, "d_head": 4, "ff_dim": 16,
                           "cnn": {"filters": [2, 2, 4, 8, 8, 8, 8], "dropout": 0.0}},
                 "batch_strong": 2, "batch_weak": 2, "batch_unlabelled": 2, "epochs": 1, "steps_per_epoch": 3,
                 "device": "cpu", "progress": False, "log_every": 1}
    args = {"store": str(synthetic_store), "out_dir": str(tmp_path / "runs"), "config": overrides,
            "config_file": str(ROOT / "configs" / "conformer_bi_openl3.yaml"), "seeds": [4, 7]}
    # a migrated Prefect home (a first start is tests/flows/test_prefect_in_process.py's subject)
    home = prefect_home(prefect_home_template, tmp_path / "prefect-home")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_HOME": str(home),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "PREFECT_LOGGING_LEVEL": "WARNING",
           # One torch thread: on a loaded 2-core machine two OpenMP threads made these steps 13x slower.
           "OMP_NUM_THREADS": "1"}
    env.pop("PREFECT_API_URL", None)
    run = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(args)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(next(x for x in run.stdout.splitlines() if x.startswith("RESULT "))[7:])
    assert report["state"] == "COMPLETED"
    assert len(report["tasks"]) == 1 and report["tasks"][0].startswith("train-seeds")  # one task for both seeds
    assert report["parameters"]["seeds"] == [4, 7]
    assert [(r["seed"], r["steps"], r["trained_steps"]) for r in report["results"]] == [(4, 3, 3), (7, 3, 3)]
    for seed in (4, 7):
        run_dir = tmp_path / "runs" / f"seed{seed}"
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        # The file's architecture and weights survive the override of other keys in the same sections.
        assert saved["model"]["architecture"] == "conformer" and saved["model"]["d_model"] == 8
        assert saved["model"]["cnn"]["filters"] == [2, 2, 4, 8, 8, 8, 8] and saved["model"]["conv_kernel"] == 7
        assert saved["interpolation_weights"] == [0.75, 0.25] and saved["seed"] == seed
        ckpt = torch.load(run_dir / CHECKPOINT, weights_only=False)
        assert ckpt["step"] == 3 and ckpt["group"] == [4, 7]
        assert len((run_dir / "log.jsonl").read_text().splitlines()) == 3
