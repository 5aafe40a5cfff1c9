"""--seeds has one meaning in every command (issue #23): a count N is seeds 0..N-1."""

from __future__ import annotations


import pytest

from avsed.cli import build_parser
from training.run_dirs import parse_seeds


def _seeds(argv: list[str]) -> list[int]:
    return build_parser().parse_args(argv).seeds


def test_train_and_paper_read_a_count_of_seeds_alike():
    train = _seeds(["train", "--store", "s", "--out", "o", "--seeds", "20"])
    paper = _seeds(["paper", "--store", "s", "--out", "o", "--seeds", "20"])
    assert train == paper == list(range(20))


@pytest.mark.parametrize("text,seeds", [("3", [0, 1, 2]), ("5-5", [5]), ("0-2,7", [0, 1, 2, 7]), ("3,5", [3, 5])])
def test_seed_lists(text, seeds):
    assert parse_seeds(text) == seeds
    assert _seeds(["train", "--store", "s", "--out", "o", "--seeds", text]) == seeds


@pytest.mark.parametrize("text", ["0", "5-2", "1,1", "x"])
def test_bad_seed_lists_are_one_usage_line(text, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--store", "s", "--out", "o", "--seeds", text])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--seeds" in err and "Traceback" not in err
