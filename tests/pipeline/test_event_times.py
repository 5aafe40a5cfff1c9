"""Event times outside a clip (issue 24, item 8): clipped to the clip when the labels are read, recorded as a
manifest problem (in the extraction's report and its ledger), and stored clipped; the clip is kept."""

from __future__ import annotations

from pathlib import Path

from pipeline.extract import ExtractConfig, plan_extraction
from avsed.core.labels import Event
from pipeline.ledger import Ledger
from avsed.core.manifest import read_manifest
from avsed.core.store import FeatureStore

A = "Yaaaaaaaaaaa_0.000_10.000.wav"
B = "Ybbbbbbbbbbb_30.000_40.000.wav"
C = "Yccccccccccc_0.000_10.000.wav"


def _metadata(root: Path) -> Path:
    m = root / "metadata"
    files = {
        "train/synthetic20/soundscapes.tsv": "filename\tonset\toffset\tevent_label\n"
                                             "1.wav\t-0.5\t2.0\tDog\n1.wav\t3.0\t4.0\tCat\n",
        "train/weak.tsv": "filename\tevent_labels\nYwwwwwwwwwww_0.000_10.000.wav\tSpeech\n",
        "train/unlabel_in_domain.tsv": "filename\nYuuuuuuuuuuu_0.000_10.000.wav\n",
        "validation/validation.tsv": "filename\tonset\toffset\tevent_label\n"
                                     f"{A}\t1.0\t3.0\tCat\n{A}\t8.0\t25.0\tSpeech\n"  # offset past the end
                                     f"{B}\t12.0\t15.0\tDog\n{B}\t0.0\t1.0\tFrying\n"  # wholly outside
                                     f"{C}\t5.0\t3.0\tCat\n",  # onset after offset: still a bad line
        "eval/public.tsv": "filename\tonset\toffset\tevent_label\nYeeeeeeeeeee_0.000_10.000.wav\t0.0\t10.0\tBlender\n",
    }
    for rel, text in files.items():
        (m / rel).parent.mkdir(parents=True, exist_ok=True)
        (m / rel).write_text(text)
    return m


def test_event_times_are_clipped_to_the_clip_and_recorded(tmp_path):
    metadata = _metadata(tmp_path)
    man = read_manifest(metadata, tmp_path / "audio")
    by = man.by_id()
    assert by[A].events == (Event(1.0, 3.0, "Cat"), Event(8.0, 10.0, "Speech"))
    assert by[B].events == (Event(0.0, 1.0, "Frying"),) and by[B].weak_labels == ("Frying",)
    assert by["1.wav"].events == (Event(0.0, 2.0, "Dog"), Event(3.0, 4.0, "Cat"))  # onset < 0 -> 0
    assert C not in by  # onset >= offset stays a bad line: its clip is left out, as before
    msgs = [str(p) for p in man.problems]
    assert any("validation.tsv:3:" in m and A in m and "8.0-25.0" in m and "clipped to 8-10 s" in m for m in msgs)
    assert any("validation.tsv:4:" in m and B in m and "12.0-15.0" in m and "left out" in m for m in msgs)
    assert any("soundscapes.tsv:2:" in m and "1.wav" in m and "clipped to 0-2 s" in m for m in msgs)
    assert len(msgs) == 4, msgs


def test_clipped_events_are_stored_and_the_problem_is_in_report_and_ledger(tmp_path):
    metadata = _metadata(tmp_path)
    store_path = tmp_path / "features.zarr"
    config = ExtractConfig(metadata=str(metadata), audio_dir=str(tmp_path / "audio"), store=str(store_path),
                           features=("logmel",))
    plan = plan_extraction(config)
    assert any(A in p and "clipped to 8-10 s" in p for p in plan.manifest_problems)
    store = FeatureStore.open(store_path)
    events = store.clip_events()
    index = store.clip_index()
    assert events[index[A]] == [Event(1.0, 3.0, "Cat"), Event(8.0, 10.0, "Speech")]
    assert events[index[B]] == [Event(0.0, 1.0, "Frying")]
    assert events[index["1.wav"]][0] == Event(0.0, 2.0, "Dog")
    assert float(store.column("event_offset").max()) <= 10.0 and float(store.column("event_onset").min()) >= 0.0
    ledger = Ledger(config.ledger_path, read_only=True)
    problems = {(p.clip_id, p.stage): p.cause for p in ledger.problems()}
    assert "clipped to 8-10 s" in problems[(A, "manifest")]
    assert "left out" in problems[(B, "manifest")]
