"""A damaged checkpoint.pt is an expected error: one line naming the file, the cause and what to do (issue 24,
item 7), for `avsed train --resume` and `avsed evaluate`; the traceback only with --debug."""

from __future__ import annotations

import io

import pytest
import torch

from avsed.cli import main
from training.checkpoint import CHECKPOINT


def _damage(path, how: str) -> None:
    buf = io.BytesIO()
    torch.save({"step": 3, "config": {"seed": 0}, "model": {"w": torch.zeros(4096)}}, buf)
    good = buf.getvalue()
    path.write_bytes({"truncated": good[: len(good) // 2], "garbage": b"<html>not a checkpoint</html>\n" * 10,
                      "empty": b""}[how])


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty"])
@pytest.mark.parametrize("command", [
    ["train", "--resume"],  # resumes with the checkpoint's own config: reads it for the seed
    ["train", "--resume", "--steps", "4"],  # a config given: the group loader reads it
    ["evaluate"],
])
def test_damaged_checkpoint_is_one_line(tmp_path, synthetic_store, capsys, how, command):
    run = tmp_path / "run"
    run.mkdir()
    ckpt = run / CHECKPOINT
    _damage(ckpt, how)
    before = ckpt.read_bytes()
    where = ["--out", str(run)] if command[0] == "train" else ["--checkpoint", str(run)]
    code = main([command[0], "--store", str(synthetic_store), *where, *command[1:]])
    err = capsys.readouterr().err
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert str(ckpt) in lines[0] and "cannot be read as a checkpoint" in lines[0]
    assert "truncated" in lines[0] and "train the run again" in lines[0]
    assert ckpt.read_bytes() == before  # nothing overwritten: the user decides what to do with it
    assert not (run / "log.jsonl").exists()


def test_damaged_checkpoint_traceback_with_debug(tmp_path, synthetic_store):
    run = tmp_path / "run"
    run.mkdir()
    _damage(run / CHECKPOINT, "garbage")
    from training.checkpoint import BadCheckpoint

    with pytest.raises(BadCheckpoint):
        main(["evaluate", "--checkpoint", str(run), "--store", str(synthetic_store), "--debug"])
