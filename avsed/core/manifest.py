"""DESED (DCASE 2020 task 4) metadata: tsv files -> clip records with partition, YouTube id and labels.

Layout as published (paths relative to the metadata and audio roots; all configurable):

    metadata/train/weak.tsv                      filename<TAB>event_labels (comma separated)
    metadata/train/unlabel_in_domain.tsv         filename
    metadata/train/synthetic20/soundscapes.tsv   filename<TAB>onset<TAB>offset<TAB>event_label
    metadata/validation/validation.tsv           same strong columns; a clip without events has empty fields
    metadata/eval/public.tsv                     same strong columns
    audio/train/weak/, audio/train/unlabel_in_domain/, audio/train/synthetic20/soundscapes/,
    audio/validation/, audio/eval/public/

Recorded clips are named `Y<11-character YouTube id>_<start>_<end>.wav` (eval: without the `Y`, whole
seconds); ids may start with `-` and contain `_`. Synthetic soundscapes (`123.wav`) carry no id and are audio-only by construction.

Reading: one physical line is one row, cells split at tabs, no quoting (a `"` is never part of a name or a
class, so quotes at a cell's edge are dropped); a UTF-8 BOM and LF / CRLF / CR line ends are accepted. A file
that is missing, empty, not UTF-8 or lacks its header line is a `ManifestError` (one line: file, cause, what
to do); a bad data line is a `ManifestProblem` naming file, line and clip, and only that clip is left out. An event
reaching before 0 or past the clip's end (25 s on a 10-s clip) is clipped to the clip and recorded as a problem.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from avsed.core.classes import DESED_CLASSES, UnknownClassError, class_index
from avsed.core.errors import AvsedError
from avsed.core.labels import ClipTiming, Event

SUPERVISION = ("strong", "weak", "unlabelled")

# Train and validation names carry a leading "Y"; the public eval set (eval/public.tsv) drops it and writes
# whole seconds ("1Ro0FgMWTUE_120_130.wav"). The two cannot be confused: 12 vs 11 characters before the times.
CLIP_NAMES = (
    re.compile(r"^Y(?P<youtube_id>[A-Za-z0-9_-]{11})_(?P<start>\d+(?:\.\d+)?)_(?P<end>\d+(?:\.\d+)?)\.(?:wav|flac)$"),
    re.compile(r"^(?P<youtube_id>[A-Za-z0-9_-]{11})_(?P<start>\d+(?:\.\d+)?)_(?P<end>\d+(?:\.\d+)?)\.(?:wav|flac)$"),
)


@dataclass(frozen=True)
class PartitionSpec:
    """One DESED partition: where its tsv and audio live and what supervision its labels give."""

    name: str
    metadata: str
    audio: str
    supervision: str  # strong | weak | unlabelled


# The DCASE 2020 task 4 partitions used by the paper (Table 2).
DESED_2020_PARTITIONS: tuple[PartitionSpec, ...] = (
    PartitionSpec("synthetic", "train/synthetic20/soundscapes.tsv", "train/synthetic20/soundscapes", "strong"),
    PartitionSpec("weak", "train/weak.tsv", "train/weak", "weak"),
    PartitionSpec("unlabelled", "train/unlabel_in_domain.tsv", "train/unlabel_in_domain", "unlabelled"),
    PartitionSpec("validation", "validation/validation.tsv", "validation", "strong"),
    PartitionSpec("eval", "eval/public.tsv", "eval/public", "strong"),
)

TRAINING_PARTITIONS = ("synthetic", "weak", "unlabelled")


@dataclass(frozen=True)
class YouTubeSegment:
    youtube_id: str
    start: float
    end: float


def parse_clip_name(filename: str) -> YouTubeSegment | None:
    """YouTube id and time range of a DESED recorded clip name, or None for clips without one."""
    name = Path(filename).name
    m = next((m for m in (p.match(name) for p in CLIP_NAMES) if m), None)
    if m is None:
        return None
    start, end = float(m["start"]), float(m["end"])
    if end <= start:
        return None
    return YouTubeSegment(m["youtube_id"], start, end)


@dataclass(frozen=True)
class Clip:
    clip_id: str  # the DESED filename, unique across partitions
    partition: str
    supervision: str
    audio_path: Path
    segment: YouTubeSegment | None
    weak_labels: tuple[str, ...] = ()
    events: tuple[Event, ...] = ()

    @property
    def youtube_id(self) -> str | None:
        return self.segment.youtube_id if self.segment else None


@dataclass(frozen=True)
class ManifestProblem:
    """A line or clip of the metadata that cannot be used; the rest of the manifest still is."""

    file: str
    line: int | None
    clip_id: str | None
    cause: str

    def __str__(self) -> str:
        where = self.file + (f":{self.line}" if self.line is not None else "")
        clip = f" clip {self.clip_id}:" if self.clip_id else ""
        return f"{where}:{clip} {self.cause}"


class ManifestError(AvsedError):
    """The metadata cannot be read at all (missing or empty file, missing header, not UTF-8)."""


@dataclass
class Manifest:
    clips: list[Clip] = field(default_factory=list)
    problems: list[ManifestProblem] = field(default_factory=list)

    def by_id(self) -> dict[str, Clip]:
        return {c.clip_id: c for c in self.clips}


_STRONG_COLUMNS = ["filename", "onset", "offset", "event_label"]


def _cell(text: str) -> str:
    # No quoting: DESED files are plain tab-separated, and csv quoting let one stray `"` swallow every
    # following line into a single field. A `"` is never part of a clip name or class name, so quotes
    # around a cell (a spreadsheet's) or a stray one at its edge are dropped rather than kept.
    return text.strip().strip('"').strip()


def _read_rows(path: Path, expected: list[str]) -> list[tuple[int, list[str]]]:
    """(line number, cells) of every non-blank data line: one physical line is one row, whatever it holds."""
    header_text = "<TAB>".join(expected)
    if not path.is_file():
        raise ManifestError(f"{path}: metadata file not found; point --metadata at the DESED metadata folder "
                            f"(this partition's file is expected there)")
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a UTF-8 BOM (spreadsheet exports write one) is dropped
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    # Lines end in LF, CRLF or (old Mac exports) CR; str.splitlines() would also split inside a line at
    # form feeds and Unicode separators, so the three endings are handled explicitly.
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if not any(ln.strip() for ln in lines):
        raise ManifestError(f"{path}: empty metadata file; expected at least the header line {header_text} "
                            f"(restore the file from the DESED release)")
    header = [_cell(h) for h in lines[0].split("\t")]
    if header[: len(expected)] != expected:
        raise ManifestError(f"{path}:1: the first line {lines[0][:80]!r} is not the header {header_text}; "
                            f"add that header line (or restore the file from the DESED release)")
    return [(i + 2, [_cell(c) for c in ln.split("\t")]) for i, ln in enumerate(lines[1:]) if ln.strip()]


def _clip_duration(name: str, clip_seconds: float) -> float:
    """Seconds of a clip as its name gives them (DESED's recorded clips), else the clip grid's length."""
    segment = parse_clip_name(name)
    return segment.end - segment.start if segment else clip_seconds


def _within_clip(event: Event, name: str, clip_seconds: float) -> Event:
    """The event with its times clipped to the clip (0 .. its duration): an annotation cannot reach outside the
    audio it annotates. Onset >= offset afterwards means it lies wholly outside."""
    end = _clip_duration(name, clip_seconds)
    return Event(min(max(event.onset, 0.0), end), min(max(event.offset, 0.0), end), event.label)


def read_partition(spec: PartitionSpec, metadata_root: Path, audio_root: Path,
                   classes: tuple[str, ...] = DESED_CLASSES,
                   clip_seconds: float = ClipTiming.clip_seconds) -> Manifest:
    """Read one partition's tsv. Bad lines become `ManifestProblem`s and their clip is left out; an event that
    starts before 0 or ends after the clip's duration (from its name, else `clip_seconds`) is clipped to the clip
    (dropped if wholly outside) and recorded as a problem, and its clip is kept."""
    path = Path(metadata_root) / spec.metadata
    expected = {"strong": _STRONG_COLUMNS, "weak": ["filename", "event_labels"], "unlabelled": ["filename"]}[spec.supervision]
    rows = _read_rows(path, expected)
    out = Manifest()
    weak: dict[str, tuple[str, ...]] = {}
    events: dict[str, list[Event]] = {}
    order: list[str] = []
    bad: set[str] = set()
    for line, row in rows:
        name = row[0] if row else ""
        if not name:
            out.problems.append(ManifestProblem(str(path), line, None, "empty filename"))
            continue
        try:
            if spec.supervision == "strong":
                if len(row) < 4:
                    raise ValueError(f"expected 4 columns ({', '.join(_STRONG_COLUMNS)}), got {len(row)}")
                onset_s, offset_s, label = row[1:4]
                if name not in events:
                    events[name] = []
                    order.append(name)
                if not (onset_s or offset_s or label):
                    continue  # a clip without events
                onset, offset = float(onset_s), float(offset_s)
                if not onset < offset:
                    raise ValueError(f"onset {onset_s} / offset {offset_s} is not onset < offset")
                class_index(label, classes)
                event = _within_clip(Event(onset, offset, label), name, clip_seconds)
                if event != Event(onset, offset, label):
                    kept = f"clipped to {event.onset:g}-{event.offset:g} s" if event.onset < event.offset else "left out"
                    out.problems.append(ManifestProblem(str(path), line, name, (
                        f"event {label} {onset_s}-{offset_s} s lies partly or wholly outside the clip "
                        f"(0-{_clip_duration(name, clip_seconds):g} s): {kept}; the clip is kept")))
                if event.onset < event.offset:
                    events[name].append(event)
            elif spec.supervision == "weak":
                if len(row) < 2:
                    raise ValueError("expected 2 columns (filename, event_labels)")
                labels = tuple(sorted({_cell(x) for x in row[1].split(",") if _cell(x)}))
                for label in labels:
                    class_index(label, classes)
                if name in weak:
                    raise ValueError("duplicate row for this clip")
                weak[name] = labels
                order.append(name)
            else:
                if name in weak:
                    raise ValueError("duplicate row for this clip")
                weak[name] = ()
                order.append(name)
        except (ValueError, UnknownClassError) as exc:
            out.problems.append(ManifestProblem(str(path), line, name, str(exc)))
            bad.add(name)
            if name not in order:
                order.append(name)
    for name in order:
        if name in bad:
            continue
        evs = tuple(sorted(events.get(name, ()), key=lambda e: (e.onset, e.label)))
        labels = weak.get(name, tuple(sorted({e.label for e in evs})))
        out.clips.append(Clip(
            clip_id=name, partition=spec.name, supervision=spec.supervision,
            audio_path=Path(audio_root) / spec.audio / name, segment=parse_clip_name(name),
            weak_labels=labels, events=evs,
        ))
    return out


def read_manifest(metadata_root: str | Path, audio_root: str | Path,
                  partitions: tuple[PartitionSpec, ...] = DESED_2020_PARTITIONS,
                  classes: tuple[str, ...] = DESED_CLASSES,
                  skip_missing_partitions: bool = False,
                  clip_seconds: float = ClipTiming.clip_seconds) -> Manifest:
    """All partitions, in order. A clip name that appears in two partitions is a problem for both."""
    merged = Manifest()
    seen: dict[str, str] = {}
    for spec in partitions:
        try:
            part = read_partition(spec, Path(metadata_root), Path(audio_root), classes, clip_seconds)
        except ManifestError:
            if skip_missing_partitions and not (Path(metadata_root) / spec.metadata).exists():
                continue
            raise
        merged.problems.extend(part.problems)
        for clip in part.clips:
            if clip.clip_id in seen:
                merged.problems.append(ManifestProblem(
                    str(Path(metadata_root) / spec.metadata), None, clip.clip_id,
                    f"duplicate clip name: already listed in partition {seen[clip.clip_id]!r}"))
                continue
            seen[clip.clip_id] = spec.name
            merged.clips.append(clip)
    return merged
