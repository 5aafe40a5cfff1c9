"""`avsed paper` on the synthetic store at toy sizes: every table in the paper's layout, then a rerun through the
Prefect flow that trains and evaluates nothing."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluation.evaluate import METRICS, EvaluationResult
from training.checkpoint import CHECKPOINT
from training.config import GateConfig, TrainConfigError
from grid.plan import paper_grid
from tests.training.conftest import small_config, synthetic_store  # noqa: F401 - the session fixture, shared
from tests.training.test_group import tiny_model
from tests.flows.conftest import prefect_home, prefect_home_template  # noqa: F401 - the session fixture, shared

ROOT = Path(__file__).resolve().parents[2]
METRIC_HEADER = ["architecture", "model", "training weights", "inference audio weight", "seeds", "cbf1_mean",
                 "sbf1_mean", "ebf1_mean", "psds1_mean", "psds2_mean"]


def _rows(path: Path) -> list[dict]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_grid_is_the_papers_tables():
    grid = paper_grid(["transformer"], ["vgg16", "openl3", "tce"], train_audio_weights=(0.5, 0.75))
    by_table = {t: [(e.label, e.scheme, e.train_audio_weight) for e in grid if e.table == t] for t in "568"}
    assert by_table["5"] == [("audio only", "none", None), ("VGG16", "fixed", 0.5), ("VGG16", "fixed", 0.75),
                             ("OpenL3", "fixed", 0.5), ("OpenL3", "fixed", 0.75), ("TCE", "fixed", 0.5),
                             ("TCE", "fixed", 0.75)]
    assert by_table["6"] == [("VGG16", "random", None), ("OpenL3", "random", None), ("TCE", "random", None)]
    assert by_table["8"] == [("OpenL3 + TCE", "fixed", 0.5), ("OpenL3 + TCE", "fixed", 0.75),
                             ("OpenL3 + TCE", "random", None)]
    tri = [e for e in grid if e.table == "8" and e.scheme == "fixed"][1].config(small_config())
    assert tri.encoders == ["logmel", "openl3", "tce"] and tri.interpolation_weights == [0.75, 0.125, 0.125]
    assert [e for e in grid if e.table == "6"][0].config(small_config()).interpolation_weights == "random"
    assert len({e.key for e in grid}) == len(grid)  # every model has its own directory
    # Beyond the paper: learned weights for every bi- and tri-encoder (per clip by default), equal weights as the
    # gate's prior; the fixed and random models keep the base config's gate off.
    learned = [e for e in grid if e.table == "L"]
    assert [(e.label, e.scheme) for e in learned] == [("VGG16", "learned"), ("OpenL3", "learned"), ("TCE", "learned"),
                                                      ("OpenL3 + TCE", "learned")]
    gated_base = small_config(model=small_config().model.model_copy(update={"gate": GateConfig(mode="frame")}))
    config = learned[1].config(gated_base)
    assert (config.model.gate.mode, config.interpolation_weights, config.encoders) == ("clip", None,
                                                                                       ["logmel", "openl3"])
    assert tri.model.gate.mode == "none" and [e for e in grid if e.table == "6"][0].config(gated_base).model.gate.mode \
        == "none"
    both = paper_grid(["conformer"], ["openl3"], learned_modes=("clip", "frame"))
    assert [e.key for e in both if e.table == "L"] == ["conformer-logmel_openl3-learned",
                                                      "conformer-logmel_openl3-learned_frame"]
    assert not [e for e in paper_grid(["conformer"], ["openl3"], learned_modes=()) if e.table == "L"]
    with pytest.raises(TrainConfigError, match="gate modes"):
        paper_grid(["conformer"], ["openl3"], learned_modes=("video",))


@pytest.mark.slow  # end to end: trains, evaluates and tabulates a grid, then reruns it through Prefect
def test_paper_command_writes_every_table_and_a_rerun_trains_nothing(tmp_path, synthetic_store, capsys,
                                                                     prefect_home_template):  # noqa: F811
    """One architecture at toy sizes (the grid test above covers both; the tables are checked with both below)."""
    from avsed.cli import main

    toy = small_config(["logmel"], steps=2, model=tiny_model("transformer"), batch_strong=2, batch_weak=2,
                       batch_unlabelled=2, log_every=2)
    toy.save(tmp_path / "toy.yaml")
    out = tmp_path / "paper"
    argv = ["paper", "--store", str(synthetic_store), "--out", str(out), "--seeds", "2", "--config",
            str(tmp_path / "toy.yaml"), "--architectures", "conformer", "--inference-audio-weights", "0.5,0.75",
            "--no-plots"]
    assert main(argv + ["--engine", "plain"]) == 0
    # the paper's 7 models and, beyond it, learned weights for the OpenL3 and TCE bi-encoders and the tri-encoder
    assert "trained 20 runs, evaluated 20 runs (10 models x 2 seeds)" in capsys.readouterr().out

    table5 = _rows(out / "table5.csv")
    assert list(table5[0])[:len(METRIC_HEADER)] == METRIC_HEADER
    assert [(r["architecture"], r["model"], r["note"]) for r in table5] == [
        ("conformer", "audio only", ""), ("conformer", "VGG16", "not in the store"), ("conformer", "OpenL3", ""),
        ("conformer", "TCE", "")]
    assert {r["seeds"] for r in table5 if not r["note"]} == {"2"}
    assert [r["training weights"] for r in table5] == ["-", "fixed", "0.75/0.25", "0.75/0.25"]
    assert all(0 <= float(r["ebf1_mean"]) <= 100 and float(r["ebf1_std"]) >= 0 for r in table5 if not r["note"])
    assert {r["inference audio weight"] for r in table5 if r["model"] == "audio only"} == {"-"}
    table6 = _rows(out / "table6.csv")
    assert [(r["model"], r["training weights"], r["note"]) for r in table6] == [
        ("VGG16", "random", "not in the store"), ("OpenL3", "random", ""), ("TCE", "random", "")]
    table8 = _rows(out / "table8.csv")
    assert [(r["model"], r["training weights"]) for r in table8] == [("OpenL3 + TCE", "0.75/0.125/0.125"),
                                                                     ("OpenL3 + TCE", "random")]
    table7 = _rows(out / "table7.csv")
    expected7 = [("conformer", model, subset) for model in ("audio only", "OpenL3", "TCE")
                 for subset in ("with video", "without video", "with video, audio only")
                 if not (model == "audio only" and subset == "with video, audio only")]
    assert [(r["architecture"], r["model"], r["eval subset"]) for r in table7] == expected7
    # The split follows the store's video availability: the with / without subsets partition the eval clips.
    clips = {(r["model"], r["eval subset"]): int(r["clips"]) for r in table7}
    assert clips["OpenL3", "with video"] + clips["OpenL3", "without video"] == 10
    assert clips["OpenL3", "with video"] == clips["OpenL3", "with video, audio only"]
    markdown = (out / "tables.md").read_text()
    for title in ("Table 5", "Table 6", "Table 7", "Table 8"):
        assert f"## {title}" in markdown
    assert all((out / f"table{n}.png").stat().st_size > 0 for n in (5, 6, 7, 8))
    # Every run is a normal run directory with its paper evaluation (tuned inference weight for bi-encoders).
    run = out / "runs" / "conformer-logmel_openl3-fixed-audio0.75" / "seed1"
    result = EvaluationResult.load(run / "evaluation" / "result.json")
    assert result.info["seed"] == 1 and result.info["audio_weight"] in (0.5, 0.75)
    assert set(result.info["audio_weight_validation_ebf1"]) == {"0.5", "0.75"}
    assert set(result.sets) == {"all", "with_video", "without_video", "with_video_audio_only"}
    assert torch.load(run / CHECKPOINT, weights_only=False)["config"]["model"]["architecture"] == "conformer"
    # Learned weights beside fixed and random ones: their own table after the paper's.
    tableL = _rows(out / "tableL.csv")
    assert [(r["model"], r["training weights"]) for r in tableL] == [
        (model, weights) for model, fixed in (("OpenL3", "0.75/0.25"), ("TCE", "0.75/0.25"),
                                              ("OpenL3 + TCE", "0.75/0.125/0.125"))
        for weights in (fixed, "random", "learned per clip")]
    assert {r["seeds"] for r in tableL} == {"2"} and all(0 <= float(r["psds2_mean"]) <= 100 for r in tableL)
    assert [r["cbf1_mean"] for r in tableL if r["model"] == "OpenL3"][:2] == [
        next(r["cbf1_mean"] for r in table5 if r["model"] == "OpenL3"),
        next(r["cbf1_mean"] for r in table6 if r["model"] == "OpenL3")]  # the paper tables' very rows
    split = _rows(out / "tableL_split.csv")
    learned_split = {r["eval subset"]: r for r in split if r["model"] == "OpenL3" and r["training weights"] ==
                     "learned per clip"}
    assert float(learned_split["without video"]["visual weight"]) == 0.0
    assert 0.0 < float(learned_split["with video"]["visual weight"]) <= 0.75  # the audio floor 0.25
    assert "## Beyond the paper: learned interpolation weights" in markdown and (out / "tableL.png").stat().st_size
    learned = EvaluationResult.load(out / "runs" / "conformer-logmel_openl3-learned" / "seed0" / "evaluation" /
                                    "result.json")
    assert learned.info["audio_weight"] is None and set(learned.info["learned_weights"]) == {"video", "absent"}

    # The rerun, through the Prefect flow in a fresh process: nothing is trained or evaluated again.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/seed*/*.pt")}
    results = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/seed*/evaluation/result.json")}
    assert len(stamps) == len(results) == 20
    # on a migrated Prefect home (a first start is tests/flows/test_prefect_in_process.py's subject)
    home = prefect_home(prefect_home_template, tmp_path / "prefect-home")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PREFECT_API_URL", None)
    rerun = subprocess.run([sys.executable, "-m", "avsed.cli", *argv, "--engine", "prefect"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "trained 0 runs, evaluated 0 runs (10 models x 2 seeds)" in rerun.stdout
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert {p: p.stat().st_mtime_ns for p in results} == results
    assert _rows(out / "table5.csv") == table5


def test_tables_keep_the_papers_row_order_for_both_architectures(tmp_path):
    """write_tables on records of two architectures (results made up, one per seed), and the best training
    weight chosen by validation EBF1 when several were run."""
    from evaluation.evaluate import SetResult, Tuning
    from evaluation.tuning import TunedPostprocessing
    from grid.runs import PaperRun, RunRecord
    from grid.tables import metric_rows, split_rows, write_tables

    grid = paper_grid(["transformer", "conformer"], ["openl3"], train_audio_weights=(0.5, 0.75))

    def result(entry, seed):
        base = 0.1 * (1 + (entry.train_audio_weight or 0)) + 0.01 * seed
        validation = 0.9 if entry.train_audio_weight == 0.5 else 0.1  # 0.5 wins on validation EBF1
        tp = TunedPostprocessing(np.full(10, 0.5), np.ones(10, dtype=np.int64), validation)
        names = ["all", "with_video", "without_video"] + ["with_video_audio_only"] * (len(entry.encoders) > 1)
        sets = {name: SetResult(10, {m: base + k / 100 for k, m in enumerate(METRICS)}, {}, {}) for name in names}
        return EvaluationResult(Tuning(tp, tp, tp), sets, tuple(f"c{i}" for i in range(10)), {},
                                {"audio_weight": 0.75, "seed": seed})

    paper = PaperRun(tmp_path, grid, ["vgg16", "tce"], [RunRecord(e, s, tmp_path, result(e, s))
                                                       for e in grid for s in (0, 1)])
    rows = metric_rows(paper, "5")
    assert [(r["architecture"], r["model"], r.get("note", "")) for r in rows] == [
        (arch, model, note) for arch in ("transformer", "conformer")
        for model, note in (("audio only", ""), ("VGG16", "not in the store"), ("OpenL3", ""),
                            ("TCE", "not in the store"))]
    openl3 = [r for r in rows if r["model"] == "OpenL3"][0]
    assert openl3["training weights"] == "0.5/0.5"  # the better training weight on validation
    assert openl3["cbf1_mean"] == pytest.approx(100 * (0.15 + 0.005)) and openl3["cbf1_std"] > 0
    assert openl3["inference audio weight"] == "0.75 ×2"
    assert [r["note"] for r in metric_rows(paper, "8")] == ["not in the store"] * 4  # TCE missing
    assert len(split_rows(paper)) == 2 * (2 + 3)  # per architecture: audio only (2 subsets), OpenL3 (3)
    paths = write_tables(paper, tmp_path)
    assert "| conformer | OpenL3 | 0.5/0.5 | 0.75 ×2 | 2 | 15.50 ± 0.71 |" in paths["markdown"].read_text()


@pytest.mark.parametrize("value,seeds", [("3", [0, 1, 2]), ("2-4", [2, 3, 4]), ("0,7", [0, 7])])
def test_paper_seeds_option(value, seeds):
    from grid.plan import seeds_argument

    assert seeds_argument(value) == seeds
