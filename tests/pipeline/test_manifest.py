"""DESED metadata reader: layout, clip names, and bad input reported per file and line."""

from pathlib import Path

import pytest

from avsed.core.errors import AvsedError
from avsed.core.labels import Event
from avsed.core.manifest import (DESED_2020_PARTITIONS, ManifestError, parse_clip_name, read_manifest)


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


# --- the plain tab-separated reader (issue 13 item 6) ------------------------------------------------------------

A, B, C, D = (f"Y{c * 11}_0.000_10.000.wav" for c in "abcd")


def test_a_stray_quote_swallows_no_line(desed):
    # With csv quoting, the `"` opening line 2's label cell ran on through the following lines as one field:
    # clips B, C and D vanished without a problem reported.
    write(desed / "metadata/train/weak.tsv",
          f'filename\tevent_labels\n{A}\t"Dog\n{B}\tCat\n{C}\t"Speech,Dishes"\n{D}\tFrying,"Blender\n')
    man = read_manifest(desed / "metadata", desed / "audio")
    assert man.problems == []
    weak = {c.clip_id: c.weak_labels for c in man.clips if c.partition == "weak"}
    assert weak == {A: ("Dog",), B: ("Cat",), C: ("Dishes", "Speech"), D: ("Blender", "Frying")}


def test_a_quote_inside_a_name_costs_only_its_own_line(desed):
    write(desed / "metadata/train/weak.tsv", f'filename\tevent_labels\n{A}\tDo"g\n{B}\tCat\n{C}\tDog\n')
    man = read_manifest(desed / "metadata", desed / "audio")
    assert [str(p) for p in man.problems] == [
        f"{desed / 'metadata/train/weak.tsv'}:2: clip {A}: unknown class 'Do\"g'; expected one of "
        "Alarm_bell_ringing, Blender, Cat, Dishes, Dog, Electric_shaver_toothbrush, Frying, Running_water, "
        "Speech, Vacuum_cleaner"]
    assert [c.clip_id for c in man.clips if c.partition == "weak"] == [B, C]


def test_utf8_bom_and_crlf_and_cr_line_ends(desed):
    (desed / "metadata/train/weak.tsv").write_bytes(
        f"\ufefffilename\tevent_labels\r\n{A}\tDog\r\n\r\n{B}\tCat,Speech\r\n".encode("utf-8"))
    (desed / "metadata/eval/public.tsv").write_bytes(
        f"\ufefffilename\tonset\toffset\tevent_label\r{C}\t0.5\t2.0\tCat\r{D}\t\t\t\r".encode("utf-8"))
    man = read_manifest(desed / "metadata", desed / "audio")
    assert man.problems == []
    by = man.by_id()
    assert by[A].weak_labels == ("Dog",) and by[B].weak_labels == ("Cat", "Speech")
    assert by[A].youtube_id == "a" * 11 and by[B].audio_path.name == B  # no "\r" left in a name
    assert by[C].events == (Event(0.5, 2.0, "Cat"),) and by[D].events == ()
    assert [c.clip_id for c in man.clips if c.partition == "eval"] == [C, D]
    # a bad line after CRLF blank lines is still reported with its own line number
    (desed / "metadata/train/weak.tsv").write_bytes(f"filename\tevent_labels\r\n\r\n{A}\tUnicorn\r\n".encode())
    problems = read_manifest(desed / "metadata", desed / "audio").problems
    assert [(p.line, p.clip_id) for p in problems] == [(3, A)]


@pytest.mark.parametrize("content,cause", [
    (b"", "empty metadata file"),
    (b"\xef\xbb\xbf\r\n  \n", "empty metadata file"),
    (f"{A}\tDog\n{B}\tCat\n".encode(), "is not the header filename<TAB>event_labels"),
    ("filename\tevent_labels\nYcaf\xe9_0_10.wav\tDog\n".encode("latin-1"), "not UTF-8"),
])
def test_unreadable_metadata_is_one_named_line_saying_what_to_do(desed, content, cause):
    path = desed / "metadata/train/weak.tsv"
    path.write_bytes(content)
    with pytest.raises(ManifestError) as info:
        read_manifest(desed / "metadata", desed / "audio")
    message = str(info.value)
    assert isinstance(info.value, AvsedError)
    assert message.startswith(f"{path}") and cause in message and "\n" not in message
    assert any(what in message for what in ("add", "restore", "save it as UTF-8"))
