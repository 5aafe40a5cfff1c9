"""A learned gate's weights per clip: `avsed evaluate` writes them (CSV + plot) with what each video shows, from the
store and the synthetic set's truth file; the summary per video kind goes into result.json."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from evaluation.gate_weights import ClipWeights, kind_summary, video_kinds
from avsed.synthetic.dataset import SynthConfig, make_synthetic_dataset
from evaluation.gate_weights import VideoTruthError, read_video_truth


def _rows(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_video_truth_of_a_synthetic_set_and_bad_files(tmp_path):
    summary = make_synthetic_dataset(tmp_path / "data", SynthConfig(clips=12, seed=5, still_fraction=0.2,
                                                                    black_fraction=0.2), progress=False)
    truth = read_video_truth(summary.truth_path)
    kinds = list(truth.values())
    assert (kinds.count("still"), kinds.count("black"), kinds.count("absent"), kinds.count("content")) == (
        summary.n_videos_still, summary.n_videos_black, summary.n_videos_missing, summary.n_videos_content)
    assert summary.n_videos_still and summary.n_videos_black and summary.n_videos_content
    served = {p.name for p in summary.video_dir.glob("*.mp4")}
    by_id = {r["clip_id"]: r["youtube_id"] for r in _rows_tsv(summary.truth_path)}
    assert {f"{by_id[c]}.mp4" for c, k in truth.items() if k != "absent"} == served
    with pytest.raises(VideoTruthError, match="no video truth file"):
        read_video_truth(tmp_path / "nowhere.tsv")
    (tmp_path / "bad.tsv").write_text("clip\tsomething\nA\tB\n")
    with pytest.raises(VideoTruthError, match=r"bad.tsv: not a video truth file"):
        read_video_truth(tmp_path / "bad.tsv")
    (tmp_path / "odd.tsv").write_text("clip_id\tkind\nA\tblurry\n")
    with pytest.raises(VideoTruthError, match=r"unknown video kinds \['blurry'\]"):
        read_video_truth(tmp_path / "odd.tsv")


def _rows_tsv(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_video_kind_is_absent_without_video_else_the_truth():
    kinds = video_kinds(["a", "b", "c", "d"], np.array([True, True, False, True]),
                        {"a": "black", "b": "content", "c": "still"})
    assert list(kinds) == ["black", "content", "absent", "video"]  # d: present, the truth does not say
    assert list(video_kinds(["a"], np.array([True]), None)) == ["video"]


def test_kind_summary_means_and_spread_per_kind_of_one_partition():
    weights = ClipWeights(clip_ids=np.array(list("abcdef")), partitions=np.array(["eval"] * 5 + ["validation"]),
                          video_kinds=np.array(["content", "content", "black", "absent", "still", "black"]),
                          encoders=["logmel", "openl3"],
                          weights=np.array([[0.4, 0.6], [0.2, 0.8], [0.9, 0.1], [1.0, 0.0], [0.7, 0.3], [0.3, 0.7]]),
                          frame_weights=None, mode="clip")
    s = kind_summary(weights)
    assert list(s) == ["content", "still", "black", "absent"]
    assert s["content"]["clips"] == 2 and s["content"]["visual_weight_mean"] == pytest.approx(0.7)
    assert s["content"]["visual_weight_std"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    assert s["black"] == {"clips": 1, "visual_weight_mean": pytest.approx(0.1), "visual_weight_std": s["black"]["visual_weight_std"]}
    assert np.isnan(s["black"]["visual_weight_std"])  # one clip: no spread
    assert kind_summary(weights, None)["black"]["clips"] == 2


@pytest.fixture(scope="module")
def gated_runs(tmp_path_factory):
    """A store, a truth file naming each video's kind, and two toy runs with learned weights (per clip and per
    frame) whose gates are set to random values (a new gate gives every clip the same weights)."""
    import torch

    from tests.training.conftest import small_config, small_model
    from training.checkpoint import CHECKPOINT
    from training.config import GateConfig
    from avsed.synthetic.stores import SyntheticStoreSpec, build_synthetic_store
    from avsed.core.store import FeatureStore
    from training.train import train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("gate_eval")
    store = root / "features.zarr"
    build_synthetic_store(store, SyntheticStoreSpec(
        clips={"synthetic": 6, "weak": 6, "unlabelled": 6, "validation": 10, "eval": 14},
        visual={"openl3": 24}, missing_fraction=0.3, seed=4))
    s = FeatureStore.open(store)
    ids, present = s.clip_ids(), s.present("openl3")
    cycle = ["content", "still", "black"]
    rows = [("clip_id", "kind")] + [(c, cycle[i % 3] if p else "absent") for i, (c, p) in enumerate(zip(ids, present))]
    truth = root / "videos.tsv"
    truth.write_text("".join("\t".join(r) + "\n" for r in rows))
    runs = {}
    for mode in ("clip", "frame"):
        model = small_model("conformer").model_copy(update={"gate": GateConfig(mode=mode)})
        run = root / mode
        train(store, small_config(["logmel", "openl3"], "conformer", steps=1, model=model), run)
        ckpt = torch.load(run / CHECKPOINT, weights_only=False)
        g = torch.Generator().manual_seed(7)
        ckpt["model"]["gate.logits.weight"] = torch.randn(ckpt["model"]["gate.logits.weight"].shape, generator=g)
        torch.save(ckpt, run / CHECKPOINT)
        runs[mode] = run
    return store, truth, runs


@pytest.mark.parametrize("mode", ["clip", "frame"])
def test_evaluate_writes_each_clips_learned_weights_and_their_summary(gated_runs, tmp_path, mode):
    import torch

    from evaluation.run import PAPER_AUDIO_WEIGHTS, evaluate_checkpoint
    from avsed.core.store import FeatureStore
    from training.config import TrainConfig
    from training.data import load_clips
    from training.fusion import resolve_weights
    from training.models import build_model
    from training.predict import load_checkpoint

    store, truth_path, runs = gated_runs
    # no example-clip plots (test_evaluate checks those): what is checked here is the learned weights' output
    ev = evaluate_checkpoint(runs[mode], store, tmp_path / "ev", split_by_availability=True,
                             audio_weight_grid=PAPER_AUDIO_WEIGHTS, device="cpu", video_truth=truth_path,
                             example_clips=0)
    info = ev.result.info
    per = " per-frame" if mode == "frame" else ""
    assert info["model"] == f"conformer logmel+openl3 (learned{per} weights)"
    assert info["audio_weight"] is None and "audio_weight_validation_ebf1" not in info  # the gate chooses
    assert set(ev.result.sets) == {"all", "with_video", "without_video", "with_video_audio_only"}
    rows = _rows(tmp_path / "ev" / "learned_weights.csv")
    assert list(rows[0]) == ["clip", "partition", "video_kind", "weight_logmel", "weight_openl3"]
    assert (tmp_path / "ev" / "learned_weights.png").stat().st_size > 1000
    truth = read_video_truth(truth_path)
    assert sorted(r["partition"] for r in rows) == ["eval"] * 14 + ["validation"] * 10
    assert all(r["video_kind"] == truth[r["clip"]] for r in rows)
    weights = np.array([[float(r["weight_logmel"]), float(r["weight_openl3"])] for r in rows])
    absent = np.array([r["video_kind"] == "absent" for r in rows])
    assert absent.any() and (~absent).any()
    assert (weights[absent] == [1.0, 0.0]).all()  # written as 1.000000 / 0.000000: exactly audio only
    assert np.allclose(weights.sum(1), 1.0, atol=2e-6) and (weights[~absent, 0] >= 0.25 - 1e-6).all()
    assert weights[~absent, 1].std() > 1e-3  # data-dependent
    # The CSV holds what the model interpolates with: recomputed here from the checkpoint and the store.
    ckpt = load_checkpoint(runs[mode])
    config = TrainConfig.from_dict(ckpt["config"])
    model = build_model(config.model, ckpt["visual_dims"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    data = load_clips(FeatureStore.open(store), ["validation", "eval"], config.encoders)
    t = data.tensors
    w = model.interpolation_weights(t.logmel, t.visual, t.visual_valid,
                                    resolve_weights(torch.tensor([0.5, 0.5]), t.available)).numpy()
    if mode == "frame":
        assert w.shape == (24, 65, 2) and not np.allclose(w[:, 0], w[:, 40], atol=1e-4)
        w = w[:, :-1].mean(axis=1)
    order = {c: i for i, c in enumerate(data.clip_ids)}
    assert np.allclose(weights, w[[order[r["clip"]] for r in rows]], atol=1e-6)
    # The summary per video kind of the eval clips, in result.json.
    saved = json.loads((tmp_path / "ev" / "result.json").read_text())["info"]["learned_weights"]
    for kind in ("content", "still", "black", "absent"):
        v = np.array([1 - float(r["weight_logmel"]) for r in rows if r["partition"] == "eval" and r["video_kind"] == kind])
        assert saved[kind]["clips"] == len(v) and saved[kind]["visual_weight_mean"] == pytest.approx(v.mean(), abs=1e-5)
    assert saved["absent"]["visual_weight_mean"] == 0.0


@pytest.mark.slow  # end to end: `avsed evaluate` on a trained run, with every plot
def test_avsed_evaluate_writes_the_learned_weights_without_a_truth_file(gated_runs, tmp_path, capsys):
    from avsed.cli import main

    store, _, runs = gated_runs
    assert main(["evaluate", "--checkpoint", str(runs["clip"]), "--store", str(store), "--split-by-availability",
                 "--tune-audio-weight", "--out", str(tmp_path / "cli")]) == 0
    rows = _rows(tmp_path / "cli" / "learned_weights.csv")
    assert {r["video_kind"] for r in rows} == {"video", "absent"}  # the store tells only whether there is a video
    assert len(list((tmp_path / "cli").glob("example_*.png"))) == 2  # the example clips' plots, too
    assert "learned weights" in capsys.readouterr().out


@pytest.mark.slow  # end to end: `avsed evaluate` on a trained run, with every plot
def test_avsed_evaluate_video_truth_names_what_each_video_shows(gated_runs, tmp_path):
    from avsed.cli import main

    store, truth, runs = gated_runs
    assert main(["evaluate", "--checkpoint", str(runs["clip"]), "--store", str(store), "--video-truth", str(truth),
                 "--out", str(tmp_path / "cli")]) == 0
    kinds = {r["video_kind"] for r in _rows(tmp_path / "cli" / "learned_weights.csv")}
    assert "video" not in kinds and "absent" in kinds and kinds & {"content", "still", "black"}
