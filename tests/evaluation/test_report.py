"""`avsed report`: tables over seeds, the split and its differences to the audio-only model, honest n = 1, no
repeated or duplicated rows."""

import csv

import numpy as np
import pytest

from avsed.cli import main
from evaluation.evaluate import METRICS, EvaluationResult, SetResult, Tuning, evaluate
from evaluation.report import (ReportError, audio_only_baselines, group_by_model, load_results, split_differences,
                               split_table, write_report)
from avsed.synthetic.frame_probs import synthetic_predictions
from evaluation.tuning import TunedPostprocessing

SETS = ("all", "with_video", "without_video", "with_video_audio_only")
OFFSET = {"all": 0.0, "with_video": 0.05, "without_video": -0.07, "with_video_audio_only": -0.2}


def _fake(model, seed, base, encoders=("logmel", "openl3"), architecture="transformer", teacher=False, sets=SETS):
    """A result whose metric m on set s is base + OFFSET[s] + 0.01 * seed + 0.001 * index(m): every number differs."""
    pp = TunedPostprocessing(np.full(2, 0.5), np.ones(2, dtype=np.int64), 0.5)
    out = {}
    for s in sets:
        metrics = {m: base + OFFSET[s] + 0.01 * seed + 0.001 * k for k, m in enumerate(METRICS)}
        out[s] = SetResult(100 if s == "all" else 60, metrics, {m: {"Dog": metrics["ebf1"], "Cat": None}
                                                                for m in ("cbf1", "sbf1", "ebf1")}, {})
    info = {"model": model, "seed": seed, "encoders": list(encoders), "architecture": architecture, "teacher": teacher,
            "checkpoint": f"runs/{model}/seed{seed}"}
    return EvaluationResult(Tuning(pp, pp, pp), out, ("Dog", "Cat"), {}, info)


def _table_lines(markdown):
    return [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| model")]


def test_single_seed_report_says_n_1_and_repeats_nothing(tmp_path):
    results = [_fake("audio-only", 0, 0.5, ("logmel",)), _fake("bi", 0, 0.6)]
    paths = write_report(results, tmp_path)
    md = paths["markdown"].read_text()
    assert "±" not in md and "n = 1" in md
    assert "| audio-only | 100 | 1 | 50.00 | 50.10 | 50.20 | 50.30 | 50.40 |" in md
    lines = _table_lines(md)
    assert len(lines) == len(set(lines))  # no duplicated rows
    split = list(csv.DictReader(paths["split_csv"].open()))
    assert [(r["model"], r["set"]) for r in split] == [
        ("audio-only", "with_video"), ("audio-only", "without_video"), ("audio-only", "with_video_audio_only"),
        ("bi", "with_video"), ("bi", "without_video"), ("bi", "with_video_audio_only")]  # no "all" rows
    assert split[0]["cbf1_std"] == "" and float(split[0]["cbf1_mean"]) == pytest.approx(55.0)
    assert paths["split_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_seeds_are_averaged_and_differences_are_to_the_matching_audio_only_model():
    results = [_fake("tr audio", s, 0.5, ("logmel",)) for s in (0, 1, 2)]
    results += [_fake("cf audio", 0, 0.3, ("logmel",), "conformer"), _fake("tr audio teacher", 0, 0.1, ("logmel",), teacher=True)]
    results += [_fake("tr bi", s, 0.6) for s in (0, 1)] + [_fake("cf bi", 0, 0.35, architecture="conformer")]
    groups = group_by_model(results)
    baselines = audio_only_baselines(groups)
    assert baselines == {"tr bi": "tr audio", "cf bi": "cf audio"}
    rows = {(r["model"], r["set"]): r for r in split_table(groups)}
    with_video = rows[("tr audio", "with_video")]
    assert with_video["seeds"] == 3
    assert with_video["ebf1_mean"] == pytest.approx(100 * (0.5 + 0.05 + 0.01 + 0.002))
    assert with_video["ebf1_std"] == pytest.approx(1.0)  # seeds 0, 1, 2 -> 0.00, 0.01, 0.02: std 1 point
    diffs = {(r["model"], r["set"]): r for r in split_differences(groups, baselines)}
    assert set(diffs) == {(m, s) for m in ("tr bi", "cf bi") for s in ("with_video", "without_video")}
    # tr bi: seeds 0, 1 (mean +0.005) minus tr audio seeds 0, 1, 2 (mean +0.01): 0.6 - 0.5 - 0.005 = 9.5 points
    assert diffs[("tr bi", "with_video")]["delta_psds2"] == pytest.approx(9.5)
    assert diffs[("cf bi", "without_video")]["delta_cbf1"] == pytest.approx(5.0)
    assert diffs[("tr bi", "with_video")]["baseline_seeds"] == 3
    assert audio_only_baselines(groups, "cf audio")["tr bi"] == "cf audio"
    with pytest.raises(ReportError, match="baseline model 'nope'"):
        audio_only_baselines(groups, "nope")


def test_a_seed_is_counted_once(tmp_path):
    a, b = _fake("bi", 0, 0.6), _fake("bi", 1, 0.7)
    path = a.save(tmp_path / "a" / "result.json")
    b.save(tmp_path / "b" / "result.json")
    results = load_results([path, tmp_path / "b" / "result.json", tmp_path / "a" / ".." / "a" / "result.json"])
    assert len(results) == 2
    assert len(group_by_model(results + [_fake("bi", 0, 0.6)])["bi"]) == 2  # the same evaluation again: kept once
    other = _fake("bi", 0, 0.65)  # seed 0 evaluated differently
    other.info["checkpoint"] = "elsewhere/seed0"
    with pytest.raises(ReportError, match=r"two evaluations of seed 0 of model 'bi' \(runs/bi/seed0, elsewhere/seed0\)"):
        group_by_model(results + [other])


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """Two real evaluations (audio-only and bi-encoder, one seed each) written as avsed evaluate writes them."""
    root = tmp_path_factory.mktemp("runs")
    validation = synthetic_predictions(40, seed=30)
    dirs = []
    for name, encoders, noise in (("audio", ["logmel"], 0.3), ("bi", ["logmel", "openl3"], 0.1)):
        test = synthetic_predictions(40, seed=31, noise=noise)
        r = evaluate(validation, test, split_by_availability=True,
                     info={"model": name, "seed": 0, "encoders": encoders, "architecture": "transformer"})
        r.save(root / name / "evaluation" / "result.json")
        dirs.append(root / name)
    return dirs


def test_cli_report_from_argv(evaluated, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", *map(str, evaluated), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "## Each model minus its audio-only model" in printed and "| bi | with video | audio | 1 | 1 |" in printed
    for name in ("report.md", "metrics.csv", "split.csv", "split_differences.csv", "per_class_ebf1.csv",
                 "split_by_video.png", "psd_roc.png"):
        assert (out / name).stat().st_size > 0, name
    with pytest.raises(SystemExit, match="baseline model 'x' is not among the results"):
        main(["report", *map(str, evaluated), "--out", str(out), "--baseline", "x"])
    with pytest.raises(SystemExit, match="no evaluation result in"):
        main(["report", str(tmp_path), "--out", str(out)])
