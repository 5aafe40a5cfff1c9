"""`avsed` as a user types it: every subcommand parsed from argv through `avsed.cli.main`, settings merged from
--config, the flags and --set, and the error paths (one line, exit 2; --debug shows the traceback)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from avsed import cli
from avsed.core.errors import AvsedError
from avsed.core.store import FeatureStore
from tests.training.conftest import synthetic_store  # noqa: F401 - the session fixture, shared

ROOT = Path(__file__).resolve().parents[2]

# A model small enough for a CPU test; the rest of the settings come from --config and --set.
SMALL_TRAIN = {"model": {"d_model": 16, "heads": 2, "d_head": 8, "ff_dim": 32,
                         "cnn": {"filters": [4, 4, 8, 8, 8, 8, 8]}},
               "encoders": ["logmel", "openl3"], "interpolation_weights": [0.75, 0.25],
               "batch_strong": 2, "batch_weak": 2, "batch_unlabelled": 2, "log_every": 1, "progress": False,
               "device": "cpu"}


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err  # one line, no traceback
    return lines[0]


def test_every_subcommand_has_help_on_every_flag():
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == {"synth", "serve-videos", "extract", "status", "migrate-store", "train", "paper",
                             "evaluate", "report", "serve", "demo", "detect"}
    for name, sub in commands.items():
        for action in sub._actions:
            if action.dest != "help":
                assert action.help, f"avsed {name} {action.option_strings or action.dest}: no help text"


@pytest.mark.slow  # end to end: a synthetic set extracted and a model trained through the CLI
def test_synth_extract_status_train_from_argv(tmp_path, synthetic_store, capsys):  # noqa: F811
    data = tmp_path / "desed"
    assert cli.main(["synth", str(data), "--clips", "6", "--seed", "2", "--missing-fraction", "0"]) == 0
    assert (data / "metadata").is_dir() and any((data / "audio").rglob("*.wav"))

    # --config, flags and --set merge key by key: the file's download section keeps its URL and retries while
    # --set changes the concurrency; the flag wins over the file for the features.
    config = tmp_path / "extract.yaml"
    config.write_text(yaml.safe_dump({"metadata": str(data / "metadata"), "audio_dir": str(data / "audio"),
                                      "features": ["logmel", "openl3"],
                                      "download": {"url_template": "http://127.0.0.1:9/{youtube_id}.mp4",
                                                   "retries": 0}}))
    store = tmp_path / "features.zarr"
    argv = ["extract", "--config", str(config), "--store", str(store), "--features", "logmel", "--engine", "plain",
            "--set", "download.concurrency=2", "--set", "clips_per_shard=4", "--json"]
    cfg = cli.extract_config_from_args(cli.build_parser().parse_args(argv))
    assert cfg.features == ("logmel",) and cfg.clips_per_shard == 4
    assert cfg.download.url_template == "http://127.0.0.1:9/{youtube_id}.mp4" and cfg.download.retries == 0
    assert cfg.download.concurrency == 2
    assert cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["audio_computed"] == {"logmel": 6}
    assert FeatureStore.open(store).n_clips == 6

    assert cli.main(["status", str(store), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["clips"] == 6 and status["features"]["logmel"]["present"] == 6

    # train: a conformer from --set over a transformer file, a few steps from --steps
    train_yaml = tmp_path / "small.yaml"
    train_yaml.write_text(yaml.safe_dump(SMALL_TRAIN))
    out = tmp_path / "run"
    assert cli.main(["train", "--store", str(synthetic_store), "--config", str(train_yaml), "--out", str(out),
                     "--steps", "2", "--seed", "5", "--set", "model.architecture=conformer",
                     "--set", "learning_rate=2e-3"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["architecture"] == "conformer" and saved["model"]["d_model"] == 16
    assert saved["model"]["cnn"]["filters"] == [4, 4, 8, 8, 8, 8, 8] and saved["model"]["cnn"]["dropout"] == 0.1
    assert saved["seed"] == 5 and saved["epochs"] == 1 and saved["steps_per_epoch"] == 2
    assert saved["learning_rate"] == 2e-3 and saved["interpolation_weights"] == [0.75, 0.25]
    assert "2 steps" in capsys.readouterr().out


def test_commands_that_run_long_or_forever_parse_from_argv(monkeypatch):
    """serve, serve-videos, demo, paper, evaluate and report: argv -> the command's function with typed values
    (the functions are replaced by a recorder; the parser is the real one)."""
    seen = {}
    for name in ("cmd_serve", "cmd_serve_videos", "cmd_demo", "cmd_paper", "cmd_evaluate", "cmd_report",
                 "cmd_migrate_store"):
        monkeypatch.setattr(cli, name, lambda args, name=name: seen.__setitem__(name, args) or 0)
    assert cli.main(["serve", "--name", "ci", "--limit", "2"]) == 0
    assert (seen["cmd_serve"].name, seen["cmd_serve"].limit) == ("ci", 2)
    assert cli.main(["serve-videos", "vids", "--port", "9001", "--removed-status", "410"]) == 0
    assert (seen["cmd_serve_videos"].directory, seen["cmd_serve_videos"].port,
            seen["cmd_serve_videos"].removed_status) == ("vids", 9001, 410)
    assert cli.main(["demo", "--out", "d", "--quick"]) == 0 and seen["cmd_demo"].quick
    assert cli.main(["paper", "--store", "s", "--out", "o", "--seeds", "3", "--train-audio-weights", "0.25,0.5",
                     "--set", "model.d_model=32", "--steps", "10"]) == 0
    paper = seen["cmd_paper"]
    assert paper.seeds == [0, 1, 2] and paper.train_audio_weights == [0.25, 0.5] and paper.set == ["model.d_model=32"]
    assert paper.inference_audio_weights == [0.25, 0.5, 0.75, 0.875] and paper.engine == "prefect"
    assert paper.learned == ["clip"]
    assert cli.main(["paper", "--store", "s", "--out", "o", "--seeds", "0-2,7", "--learned", "clip,frame"]) == 0
    assert seen["cmd_paper"].seeds == [0, 1, 2, 7] and seen["cmd_paper"].learned == ["clip", "frame"]
    assert cli.main(["evaluate", "--checkpoint", "r", "--store", "s", "--teacher", "--audio-weight", "1"]) == 0
    assert seen["cmd_evaluate"].teacher and seen["cmd_evaluate"].audio_weight == 1.0
    assert cli.main(["report", "a", "b", "--out", "rep", "--baseline", "ao"]) == 0
    assert seen["cmd_report"].runs == ["a", "b"] and seen["cmd_report"].baseline == "ao"
    assert cli.main(["migrate-store", "s.zarr", "--clips-per-shard", "64"]) == 0
    assert seen["cmd_migrate_store"].clips_per_shard == 64


def test_paper_settings_merge_and_refuse_like_train(tmp_path, capsys):
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump({"model": {"architecture": "conformer", "heads": 2}}))
    assert cli.main(["paper", "--store", str(tmp_path / "none.zarr"), "--out", str(tmp_path / "o"), "--engine",
                     "plain", "--config", str(config), "--set", "model.hedas=4"]) == 2
    line = error_line(capsys)
    assert "'hedas' (did you mean 'heads'?)" in line and "in 'model'" in line
    assert cli.main(["paper", "--store", str(tmp_path / "none.zarr"), "--out", str(tmp_path / "o"), "--engine",
                     "plain", "--seeds", "0-0", "--config", str(config)]) == 2
    assert "none.zarr" in error_line(capsys)


@pytest.mark.parametrize("argv, expected", [
    (["extract", "--metadata", "m", "--audio-dir", "a", "--store", "s", "--set", "featurs=[logmel]"],
     "unknown keys 'featurs' (did you mean 'features'?)"),
    (["extract", "--metadata", "m", "--audio-dir", "a", "--store", "s", "--set", "download.concurency=2"],
     "'concurency' (did you mean 'concurrency'?) in 'download'"),
    (["extract", "--metadata", "m", "--audio-dir", "a", "--store", "s", "--set", "download.concurrency=many"],
     "download.concurrency: input should be a valid integer"),
    (["extract", "--metadata", "m", "--audio-dir", "a", "--store", "s", "--set", "features=[logmel, opnl3]"],
     "did you mean 'openl3'?"),
    (["extract", "--metadata", "m", "--audio-dir", "a", "--store", "s", "--set", "frame_size"],
     "expected KEY=VALUE"),
    (["extract", "--metadata", "m", "--audio-dir", "a"], "missing store"),
    (["train", "--store", "s", "--out", "o", "--set", "model.d_modl=32"],
     "unknown keys 'd_modl' (did you mean 'd_model'?) in 'model'"),
    (["train", "--store", "s", "--out", "o", "--set", "model.d_model=wide"], "model.d_model: input should be a valid"),
    (["train", "--store", "s", "--out", "o", "--set", "model.architecture=conformr"], "did you mean 'conformer'?"),
    (["train", "--store", "s", "--out", "o", "--config", "no/such.yaml"], "no/such.yaml: no such config file"),
    (["train", "--store", "s", "--out", "o", "--seed", "1", "--seeds", "0-1"], "give --seed or --seeds, not both"),
])
def test_bad_settings_are_one_line_and_exit_2(argv, expected, capsys):
    assert cli.main(argv) == 2
    line = error_line(capsys)
    assert line.startswith(f"avsed {argv[0]}: error: ") and expected in line, line


def test_missing_store_is_one_line(tmp_path, capsys):
    assert cli.main(["train", "--store", str(tmp_path / "nothing.zarr"), "--out", str(tmp_path / "run"),
                     "--steps", "1"]) == 2
    line = error_line(capsys)
    assert "nothing.zarr" in line and "avsed extract" in line
    assert cli.main(["status", str(tmp_path / "nothing.zarr")]) == 2
    assert "nothing.zarr" in error_line(capsys)


def test_debug_shows_the_traceback(tmp_path):
    argv = ["train", "--store", str(tmp_path / "nothing.zarr"), "--out", str(tmp_path / "run"), "--steps", "1"]
    with pytest.raises(AvsedError, match="nothing.zarr"):
        cli.main(["--debug", *argv])
    with pytest.raises(AvsedError, match="nothing.zarr"):
        cli.main([*argv, "--debug"])


@pytest.mark.slow  # a new interpreter that imports torch
def test_debug_shows_the_traceback_on_stderr(tmp_path):
    # as a user sees it: the traceback on stderr
    argv = ["train", "--store", str(tmp_path / "nothing.zarr"), "--out", str(tmp_path / "run"), "--steps", "1"]
    run = subprocess.run([sys.executable, "-m", "avsed.cli", *argv, "--debug"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 1 and "Traceback (most recent call last)" in run.stderr
    assert "nothing.zarr" in run.stderr.splitlines()[-1]


def test_a_store_locked_by_another_run_is_one_line(tmp_path, capsys):
    data = tmp_path / "desed"
    assert cli.main(["synth", str(data), "--clips", "5", "--missing-fraction", "0"]) == 0
    store = tmp_path / "features.zarr"
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time\nfrom avsed.core.store import StoreLock\n"
                               "with StoreLock(sys.argv[1], purpose='another extraction'):\n"
                               "    print('held', flush=True)\n    time.sleep(600)\n", str(store)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        capsys.readouterr()
        assert cli.main(["extract", "--metadata", str(data / "metadata"), "--audio-dir", str(data / "audio"),
                         "--store", str(store), "--engine", "plain", "--json"]) == 2
        line = error_line(capsys)
        assert "another extraction" in line and str(holder.pid) in line, line
    finally:
        holder.terminate()
        holder.wait(timeout=30)
