"""Seeds trained together: equal to solo runs, resumable after a kill, and a step without host round trips."""

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
from torch.profiler import ProfilerActivity, profile

from training.checkpoint import CHECKPOINT, PENDING, load_checkpoints, save_checkpoints
from training.cnn import CNNFrontEnd
from training.train import load_training_data, prepare_group, train, train_group

from .conftest import small_config, steps_without_host_sync, tiny_model

ROOT = Path(__file__).resolve().parents[2]
# Events of a host round trip in the CPU profiler: reading a tensor's value (item / bool / float), or making a
# tensor from host data (torch.tensor, from_numpy, as_tensor on numpy or Python numbers all lift_fresh).
HOST_SYNC_EVENTS = ("aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::lift_fresh")


def _states(run: Path) -> dict:
    return torch.load(run / CHECKPOINT, map_location="cpu", weights_only=False)


def _max_difference(a: dict, b: dict) -> float:
    return max((a[k][n].double() - b[k][n].double()).abs().max().item()
               for k in ("model", "teacher") for n in a[k] if a[k][n].is_floating_point())


@pytest.mark.parametrize("architecture,encoders,mixup,per_kind", [
    ("transformer", ["logmel"], 0.0, 1),
    # the conformer cases cost 20-30 s each: the full suite's (the fast tier keeps the transformer's)
    pytest.param("conformer", ["logmel"], 0.0, 1, marks=pytest.mark.slow),
    ("transformer", ["logmel", "openl3", "tce"], 0.0, 1),
    pytest.param("conformer", ["logmel", "openl3", "tce"], 0.5, 2,  # mixup on too (2 clips per kind to have partners)
                 marks=pytest.mark.slow),
])
def test_each_seed_of_a_group_equals_the_seed_trained_alone(tmp_path, synthetic_store, architecture, encoders, mixup,
                                                            per_kind):
    weights = "random" if len(encoders) > 1 else None
    config = small_config(encoders, architecture, steps=20, model=tiny_model(architecture), batch_strong=per_kind,
                          batch_weak=per_kind, batch_unlabelled=per_kind, mixup_rate=mixup,
                          interpolation_weights=weights,
                          feature_dtype="float64", model_dtype="float64", log_every=20)
    data = load_training_data(synthetic_store, config.resolved("cpu"), torch.device("cpu"))
    group = train_group(synthetic_store, config, {s: tmp_path / f"group{s}" for s in (0, 1, 2)}, data=data)
    assert [r.steps for r in group] == [20, 20, 20]
    for seed in (0, 1, 2):
        train(synthetic_store, {**config.to_dict(), "seed": seed}, tmp_path / f"solo{seed}", data=data)
        solo, grouped = _states(tmp_path / f"solo{seed}"), _states(tmp_path / f"group{seed}")
        assert _max_difference(solo, grouped) < 1e-5
        assert grouped["config"]["seed"] == seed and grouped["group"] == [0, 1, 2]
        # ... and the runs really trained and differ between seeds (the comparison can fail).
        moved = max((solo["model"][n] - solo["teacher"][n]).abs().max().item() for n in solo["model"]
                    if solo["model"][n].is_floating_point())
        assert moved > 1e-4
    assert _max_difference(_states(tmp_path / "group0"), _states(tmp_path / "group1")) > 1e-3


def test_more_seeds_than_group_seeds_train_as_consecutive_groups(tmp_path, synthetic_store):
    """Five seeds with group_seeds 2: groups [0, 1], [2, 3], [4] (a group's memory grows with its seeds; 20 at
    once ran out of memory on an H100), each seed as it trains alone."""
    config = small_config(["logmel", "openl3"], "transformer", steps=6, model=tiny_model("transformer"),
                          batch_strong=1, batch_weak=1, batch_unlabelled=1, feature_dtype="float64",
                          model_dtype="float64", log_every=6, group_seeds=2)
    data = load_training_data(synthetic_store, config.resolved("cpu"), torch.device("cpu"))
    results = train_group(synthetic_store, config, {s: tmp_path / f"group{s}" for s in range(5)}, data=data)
    assert [r.steps for r in results] == [6] * 5
    assert [_states(tmp_path / f"group{s}")["group"] for s in range(5)] == [[0, 1], [0, 1], [2, 3], [2, 3], [4]]
    train(synthetic_store, {**config.to_dict(), "seed": 3}, tmp_path / "solo3", data=data)
    assert _max_difference(_states(tmp_path / "solo3"), _states(tmp_path / "group3")) < 1e-5


def test_seeds_on_streams_equal_the_seeds_trained_alone(tmp_path, synthetic_store):
    """seeds_mode streams: one single-seed step per seed (CUDA streams; one after another on the CPU) on slices of
    the group's tensors. Each seed's checkpoint (model, teacher, optimiser) and losses are its solo run's, and a
    resumed streams group continues as an uninterrupted one."""
    config = small_config(["logmel", "openl3"], "transformer", steps=6, model=tiny_model("transformer"),
                          batch_strong=1, batch_weak=1, batch_unlabelled=1, feature_dtype="float64",
                          model_dtype="float64", log_every=3, checkpoint_every=3, seeds_mode="streams",
                          interpolation_weights="random", mixup_rate=0.5)
    data = load_training_data(synthetic_store, config.resolved("cpu"), torch.device("cpu"))
    results = train_group(synthetic_store, config, {s: tmp_path / f"group{s}" for s in (0, 1)}, data=data)
    half = train_group(synthetic_store, config, {s: tmp_path / f"half{s}" for s in (0, 1)}, data=data, stop_after=3)
    assert [r.steps for r in half] == [3, 3]
    resumed = train_group(synthetic_store, config, {s: tmp_path / f"half{s}" for s in (0, 1)}, data=data, resume=True)
    for seed in (0, 1):
        solo = train(synthetic_store, {**config.to_dict(), "seed": seed, "seeds_mode": "vmap"},
                     tmp_path / f"solo{seed}", data=data)
        a, b = _states(tmp_path / f"solo{seed}"), _states(tmp_path / f"group{seed}")
        assert _max_difference(a, b) < 1e-9
        assert a["optimizer"]["step"] == b["optimizer"]["step"] == 6.0
        assert max((a["optimizer"]["exp_avg"][n] - b["optimizer"]["exp_avg"][n]).abs().max().item()
                   for n in a["optimizer"]["exp_avg"]) < 1e-9
        assert [h["total"] for h in solo.history] == pytest.approx([h["total"] for h in results[seed].history])
        assert _max_difference(_states(tmp_path / f"half{seed}"), b) < 1e-9
        assert resumed[seed].history[-1]["total"] == pytest.approx(results[seed].history[-1]["total"])
    assert _max_difference(_states(tmp_path / "group0"), _states(tmp_path / "group1")) > 1e-3


def _group_argv(store, config_path, out, steps):
    return [sys.executable, "-m", "avsed.cli", "train", "--store", str(store), "--config", str(config_path),
            "--out", str(out), "--seeds", "0-2", "--steps", str(steps), "--resume"]


@pytest.mark.slow  # end to end: `avsed train` in a fresh process, killed, then resumed
def test_killed_group_resumes_to_the_uninterrupted_result(tmp_path, synthetic_store):
    """SIGKILL during training (dropout and mixup on), then resume: bit-identical to an uninterrupted group."""
    steps = 12
    config = small_config(["logmel", "openl3"], steps=steps, model=tiny_model("transformer"),
                          interpolation_weights="random", mixup_rate=0.5, checkpoint_every=2, log_every=1)
    config.model.dropout = config.model.cnn.dropout = 0.1
    config.save(tmp_path / "c.yaml")
    full = train_group(synthetic_store, config, {s: tmp_path / "full" / f"seed{s}" for s in range(3)})
    # One thread, as in this process (conftest): the reduction order, and so the bits, depend on it.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen(_group_argv(synthetic_store, tmp_path / "c.yaml", tmp_path / "killed", steps),
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    ckpt = tmp_path / "killed" / "seed2" / CHECKPOINT
    while time.time() < deadline and proc.poll() is None and not ckpt.exists():
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = {_states(tmp_path / "killed" / f"seed{s}")["step"] for s in range(3)
                  if (tmp_path / "killed" / f"seed{s}" / CHECKPOINT).exists()}
    assert max(stopped_at) < steps
    from avsed.cli import main

    assert main(_group_argv(synthetic_store, tmp_path / "c.yaml", tmp_path / "killed", steps)[3:]) == 0
    for s in range(3):
        a, b = _states(tmp_path / "full" / f"seed{s}"), _states(tmp_path / "killed" / f"seed{s}")
        assert a["step"] == b["step"] == steps
        for key in ("model", "teacher"):
            for name, value in a[key].items():
                assert torch.equal(value, b[key][name]), (s, key, name)
        for name, value in a["optimizer"]["exp_avg_sq"].items():
            assert torch.equal(value, b["optimizer"]["exp_avg_sq"][name])
        log_a = [json.loads(x) for x in (tmp_path / "full" / f"seed{s}" / "log.jsonl").read_text().splitlines()]
        log_b = [json.loads(x) for x in (tmp_path / "killed" / f"seed{s}" / "log.jsonl").read_text().splitlines()]
        assert [x["step"] for x in log_b] == list(range(1, steps + 1))
        assert [x["total"] for x in log_a] == [x["total"] for x in log_b]
    assert full[0].trained_steps == steps


def test_interrupted_group_checkpoint_is_rolled_back_or_forward(tmp_path):
    dirs = [tmp_path / f"seed{s}" for s in range(3)]
    for d in dirs:
        d.mkdir()
    save_checkpoints(dirs, [{"step": 2, "seed": s} for s in range(3)])
    # Killed in phase 1: only seed 0's next checkpoint was written -> every seed stays at step 2.
    torch.save({"step": 4, "seed": 0}, dirs[0] / PENDING)
    assert [c["step"] for c in load_checkpoints(dirs)] == [2, 2, 2]
    assert not (dirs[0] / PENDING).exists()
    # Killed in phase 2: seed 0 renamed, seeds 1 and 2 still pending -> every seed moves to step 4.
    torch.save({"step": 4, "seed": 0}, dirs[0] / CHECKPOINT)
    for s in (1, 2):
        torch.save({"step": 4, "seed": s}, dirs[s] / PENDING)
    assert [(c["step"], c["seed"]) for c in load_checkpoints(dirs)] == [(4, 0), (4, 1), (4, 2)]
    assert not any((d / PENDING).exists() for d in dirs)


def test_seeds_added_to_a_finished_group_train_alone_and_finished_ones_not_again(tmp_path, synthetic_store):
    config = small_config(["logmel"], steps=2, model=tiny_model("transformer"))
    train_group(synthetic_store, config, {0: tmp_path / "seed0"})
    before = (tmp_path / "seed0" / CHECKPOINT).stat().st_mtime_ns
    results = train_group(synthetic_store, config, {0: tmp_path / "seed0", 1: tmp_path / "seed1"}, resume=True)
    assert [r.trained_steps for r in results] == [0, 2] and [r.steps for r in results] == [2, 2]
    assert (tmp_path / "seed0" / CHECKPOINT).stat().st_mtime_ns == before
    # The new seed equals that seed trained alone (a group of one is a group).
    train(synthetic_store, {**config.to_dict(), "seed": 1}, tmp_path / "alone1")
    a, b = _states(tmp_path / "seed1"), _states(tmp_path / "alone1")
    assert all(torch.equal(a["model"][n], b["model"][n]) for n in a["model"])


def _count(prof, names) -> dict[str, int]:
    counts = dict.fromkeys(names, 0)
    for event in prof.events():
        if event.name in counts:
            counts[event.name] += 1
    return counts


@pytest.mark.parametrize("seeds", [[0], pytest.param([0, 1], marks=pytest.mark.slow)])  # a group: full suite
def test_steady_state_step_makes_no_host_round_trip(synthetic_store, seeds):
    """Dropout, mixup and random weights on; a step that is neither a log nor a chunk-boundary step."""
    config = small_config(["logmel", "openl3", "tce"], "conformer", steps=10, model=tiny_model("conformer"),
                          interpolation_weights="random", mixup_rate=0.5).resolved("cpu")
    config.model.dropout = config.model.cnn.dropout = 0.1
    data = load_training_data(synthetic_store, config, torch.device("cpu"))
    group = prepare_group(config, seeds, data, torch.device("cpu"))
    # vmap cannot answer CUDA batch norm's memory-format query: stacked seeds must keep NCHW maps, one seed may
    # use NHWC (None: on CUDA). Seen on an H100: a group of 8 crashed inside vmap with NHWC maps.
    assert [m.channels_last for m in group.skeleton.modules() if isinstance(m, CNNFrontEnd)] == \
        [None if len(seeds) == 1 else False]
    for step in range(2):
        group.before_step(step)
        group.step_fn()
    before = [p.detach().clone() for p in group.student.parameter_list()]
    group.before_step(2)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        group.step_fn()
    assert _count(prof, HOST_SYNC_EVENTS) == dict.fromkeys(HOST_SYNC_EVENTS, 0)
    assert len(prof.events()) > 500  # the profiler saw the step
    assert any(not torch.equal(a, b) for a, b in zip(before, group.student.parameter_list()))
    # Positive control: reading the losses (what a logging step does) is seen as host reads.
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        losses = group.step_fn.read_losses()
    assert _count(prof, HOST_SYNC_EVENTS)["aten::_local_scalar_dense"] > 0
    assert len(losses) == len(seeds) and losses[0]["total"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("capture", [False, True])
def test_cuda_step_does_not_synchronise(synthetic_store, capture):
    config = small_config(["logmel", "openl3"], steps=10, interpolation_weights="random", mixup_rate=0.5,
                          device="cuda", capture=capture).resolved("cuda")
    assert config.bf16 and config.tf32
    device = torch.device("cuda")
    data = load_training_data(synthetic_store, config, device)
    group = prepare_group(config, [0, 1], data, device)
    steps_without_host_sync(group)
    assert (group.step_fn.graph is not None) == capture
    assert all(v["total"] > 0 for v in group.step_fn.read_losses())
