"""Export of predictions in the formats the field's tools read.

- DESED_task's predictions TSV (`filename onset offset event_label`, one row per detected event, clips without
  detections absent) after the tuned post-processing: one file per tuned metric (SBF1, EBF1).
- sed_scores_eval score tables: one `<audio id>.tsv` per clip with columns `onset offset <class...>`, one row
  per output frame, as `sed_scores_eval.io.write_sed_scores` writes them (audio id = file name less extension).
- The ground truth in DESED's metadata layout (a clip without events is a row with empty fields) and the
  durations table (`filename duration`) that psds_eval / sed_scores_eval take beside them.
Times and scores are written with `repr`, so reading them back gives the same floats and the same metrics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evaluation.postprocess import frame_runs, postprocess
from evaluation.predictions import Predictions, PredictionsError
from evaluation.tuning import TunedPostprocessing

HEADER = "filename\tonset\toffset\tevent_label\n"


def audio_id(clip_id: str) -> str:
    """sed_scores_eval's key of a clip: its file name without the extension (`read_ground_truth_events`)."""
    return clip_id.rsplit(".", maxsplit=1)[0] if "." in clip_id else clip_id


def detection_lines(predictions: Predictions, binary: np.ndarray) -> list[str]:
    """TSV rows (no header) of the events in (n, frames, C) binary detections, clip by clip, by onset."""
    runs = frame_runs(np.asarray(binary, dtype=bool)[None])
    bounds = predictions.timing.frame_to_time(np.arange(predictions.timing.output_frames + 1)).tolist()
    order = np.lexsort((runs.cls, runs.start, runs.clip))
    return [f"{predictions.clip_ids[i]}\t{bounds[s]!r}\t{bounds[e]!r}\t{predictions.classes[c]}\n"
            for i, s, e, c in zip(runs.clip[order], runs.start[order].tolist(), runs.stop[order].tolist(),
                                  runs.cls[order])]


def write_detections(predictions: Predictions, postprocessing: TunedPostprocessing, path: str | Path) -> Path:
    """DESED_task's predictions TSV of the (masked) frame probabilities after class-wise threshold + median filter."""
    binary = postprocess(predictions.masked_frame_probs(), postprocessing.thresholds, postprocessing.filter_sizes)
    return _write(path, HEADER + "".join(detection_lines(predictions, binary)))


def write_ground_truth(predictions: Predictions, path: str | Path) -> Path:
    lines = [HEADER]
    for cid, evs in zip(predictions.clip_ids, predictions.events):
        lines += [f"{cid}\t{float(e.onset)!r}\t{float(e.offset)!r}\t{e.label}\n" for e in evs] or [f"{cid}\t\t\t\n"]
    return _write(path, "".join(lines))


def write_durations(predictions: Predictions, path: str | Path) -> Path:
    return _write(path, "filename\tduration\n" + "".join(
        f"{cid}\t{float(d)!r}\n" for cid, d in zip(predictions.clip_ids, predictions.durations)))


def write_score_tables(predictions: Predictions, directory: str | Path) -> Path:
    """One sed_scores_eval score table per clip: the masked frame probabilities on the output-frame grid."""
    ids = [audio_id(str(c)) for c in predictions.clip_ids]
    if len(set(ids)) != len(ids):
        seen: dict[str, str] = {}
        for cid, key in zip(predictions.clip_ids, ids):
            if key in seen:
                raise PredictionsError(f"clips {seen[key]} and {cid} would share the score table {key}.tsv: "
                                       "give clips names that differ before the extension")
            seen[key] = str(cid)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.tsv"):  # a table of a clip no longer in the set would be read as one of it
        stale.unlink()
    bounds = predictions.timing.frame_to_time(np.arange(predictions.timing.output_frames + 1)).tolist()
    head = "onset\toffset\t" + "\t".join(predictions.classes) + "\n"
    frames = [f"{a!r}\t{b!r}\t" for a, b in zip(bounds[:-1], bounds[1:])]
    probs = predictions.masked_frame_probs().astype(np.float64)
    for key, p in zip(ids, probs):
        rows = (f + "\t".join(map(repr, r)) + "\n" for f, r in zip(frames, p.tolist()))
        (directory / f"{key}.tsv").write_text(head + "".join(rows))
    return directory


def export_predictions(predictions: Predictions, tuning, out_dir: str | Path) -> dict[str, Path]:
    """Everything above for one set of clips into `out_dir`; `tuning` is evaluate.Tuning. Returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return {  # the score tables first: they refuse clip names that would collide before anything is written
        "scores": write_score_tables(predictions, out_dir / "scores"),
        "predictions_sbf1": write_detections(predictions, tuning.sbf1, out_dir / "predictions_sbf1.tsv"),
        "predictions_ebf1": write_detections(predictions, tuning.ebf1, out_dir / "predictions_ebf1.tsv"),
        "ground_truth": write_ground_truth(predictions, out_dir / "ground_truth.tsv"),
        "durations": write_durations(predictions, out_dir / "durations.tsv"),
    }


def _write(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
