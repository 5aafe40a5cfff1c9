"""DESED metadata reader: layout, clip names, and bad input reported per file and line."""

from pathlib import Path

import pytest

from pipeline.labels import Event
from pipeline.manifest import (DESED_2020_PARTITIONS, ManifestError, parse_clip_name, read_manifest)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def desed(tmp_path):
    m = tmp_path / "metadata"
    write(m / "train/synthetic20/soundscapes.tsv",
          "filename\tonset\toffset\tevent_label\n0.wav\t0.5\t2.0\tDog\n0.wav\t1.0\t3.5\tSpeech\n1.wav\t0.0\t10.0\tFrying\n")
    write(m / "train/weak.tsv",
          "filename\tevent_labels\nY-BJNMHMZDcU_50.000_60.000.wav\tAlarm_bell_ringing,Dog\nYa_b-c_d-e_f_0.000_10.000.wav\tSpeech\n")
    write(m / "train/unlabel_in_domain.tsv", "filename\nY00000000000_30.000_40.000.wav\n")
    write(m / "validation/validation.tsv",
          "filename\tonset\toffset\tevent_label\nYvalclip0001_0.000_10.000.wav\t1.2\t3.4\tCat\nYvalclip0002_0.000_10.000.wav\t\t\t\n")
    write(m / "eval/public.tsv", "filename\tonset\toffset\tevent_label\nYevalclip001_10.000_20.000.wav\t0.0\t1.0\tBlender\n")
    return tmp_path


def test_reads_all_partitions_with_labels(desed):
    man = read_manifest(desed / "metadata", desed / "audio")
    assert man.problems == []
    by = man.by_id()
    assert [c.partition for c in man.clips] == ["synthetic"] * 2 + ["weak"] * 2 + ["unlabelled", "validation", "validation", "eval"]
    assert by["0.wav"].events == (Event(0.5, 2.0, "Dog"), Event(1.0, 3.5, "Speech"))
    assert by["0.wav"].weak_labels == ("Dog", "Speech") and by["0.wav"].segment is None
    assert by["0.wav"].audio_path == desed / "audio/train/synthetic20/soundscapes/0.wav"
    weak = by["Y-BJNMHMZDcU_50.000_60.000.wav"]
    assert weak.weak_labels == ("Alarm_bell_ringing", "Dog") and weak.youtube_id == "-BJNMHMZDcU"
    assert (weak.segment.start, weak.segment.end) == (50.0, 60.0)
    assert by["Ya_b-c_d-e_f_0.000_10.000.wav"].youtube_id == "a_b-c_d-e_f"
    assert by["Yvalclip0002_0.000_10.000.wav"].events == () and by["Yvalclip0002_0.000_10.000.wav"].supervision == "strong"
    assert by["Y00000000000_30.000_40.000.wav"].supervision == "unlabelled"


def test_clip_names():
    assert parse_clip_name("Y--HhpNOZFoQ_0.000_5.000.wav").youtube_id == "--HhpNOZFoQ"
    eval_name = parse_clip_name("1Ro0FgMWTUE_120_130.wav")  # eval/public.tsv: no "Y", whole seconds
    assert (eval_name.youtube_id, eval_name.start, eval_name.end) == ("1Ro0FgMWTUE", 120.0, 130.0)
    assert parse_clip_name("123.wav") is None
    assert parse_clip_name("Ytooshort_0.000_10.000.wav") is None
    assert parse_clip_name("Yabcdefghijk_10.000_5.000.wav") is None  # end before start


def test_bad_lines_are_reported_with_file_and_line_and_the_rest_is_kept(desed):
    write(desed / "metadata/train/weak.tsv",
          "filename\tevent_labels\nYaaaaaaaaaaa_0.000_10.000.wav\tDog\nYbbbbbbbbbbb_0.000_10.000.wav\tUnicorn\n"
          "Yaaaaaaaaaaa_0.000_10.000.wav\tCat\n")
    write(desed / "metadata/validation/validation.tsv",
          "filename\tonset\toffset\tevent_label\nYccccccccccc_0.000_10.000.wav\tx\t3.4\tCat\n"
          "Ydddddddddddd_0.000_10.000.wav\t5\t3\tCat\nYeeeeeeeeeee_0.000_10.000.wav\t1\t2\tCat\n"
          "0.wav\t1\t2\tDog\n")
    man = read_manifest(desed / "metadata", desed / "audio")
    msgs = [str(p) for p in man.problems]
    assert any("weak.tsv:3:" in m and "Unicorn" in m and "Ybbbbbbbbbbb" in m for m in msgs)
    assert any("weak.tsv:4:" in m and "duplicate" in m for m in msgs)
    assert any("validation.tsv:2:" in m and "could not convert" in m for m in msgs)
    assert any("validation.tsv:3:" in m and "onset" in m for m in msgs)
    assert any("duplicate clip name" in m and "0.wav" in m and "synthetic" in m for m in msgs)
    ids = set(man.by_id())
    assert "Yeeeeeeeeeee_0.000_10.000.wav" in ids and "Ybbbbbbbbbbb_0.000_10.000.wav" not in ids
    assert "Yccccccccccc_0.000_10.000.wav" not in ids


def test_missing_file_and_wrong_header_are_fatal(desed):
    (desed / "metadata/eval/public.tsv").unlink()
    with pytest.raises(ManifestError, match="public.tsv: metadata file not found"):
        read_manifest(desed / "metadata", desed / "audio")
    assert read_manifest(desed / "metadata", desed / "audio", skip_missing_partitions=True).clips
    write(desed / "metadata/eval/public.tsv", "name\tstart\n")
    with pytest.raises(ManifestError, match="header"):
        read_manifest(desed / "metadata", desed / "audio")


def test_published_partition_paths():
    paths = {p.name: (p.metadata, p.audio) for p in DESED_2020_PARTITIONS}
    assert paths["weak"] == ("train/weak.tsv", "train/weak")
    assert paths["unlabelled"] == ("train/unlabel_in_domain.tsv", "train/unlabel_in_domain")
    assert paths["synthetic"][0] == "train/synthetic20/soundscapes.tsv"
