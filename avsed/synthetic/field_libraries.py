"""Calls of the field's libraries (sed_eval, psds_eval, sed_scores_eval) used as references by the tests and benchmark.

`desed_task_sed_eval` is DESED_task's own call of sed_eval (desed_task/evaluation/evaluation_measures.py:
`compute_sed_eval_metrics` -> `event_based_evaluation_df` / `segment_based_evaluation_df`), step for step:
files are the reference table's filenames, classes the labels present in either table, a clip without
events is `[{"filename": fname}]`, and SegmentBasedMetrics.evaluate gets no `evaluated_length_seconds`.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import sed_eval

from evaluation.postprocess import decode_events
from evaluation.predictions import Predictions

COLUMNS = ["filename", "onset", "offset", "event_label"]


def ground_truth_frame(preds: Predictions) -> pd.DataFrame:
    """DESED metadata layout: one row per event, a row with empty fields for a clip without events."""
    rows = []
    for cid, evs in zip(preds.clip_ids, preds.events):
        rows += [(str(cid), e.onset, e.offset, e.label) for e in evs] or [(str(cid), np.nan, np.nan, np.nan)]
    return pd.DataFrame(rows, columns=COLUMNS)


def detections_frame(preds: Predictions, binary: np.ndarray) -> pd.DataFrame:
    """DESED_task's predictions table: one row per detected event, clips without detections absent."""
    rows = [(str(cid), e.onset, e.offset, e.label)
            for cid, evs in zip(preds.clip_ids, decode_events(binary, preds.encoder)) for e in evs]
    return pd.DataFrame(rows, columns=COLUMNS)


def _event_list_current_file(df: pd.DataFrame, fname: str) -> list[dict]:
    # desed_task get_event_list_current_file
    event_file = df[df["filename"] == fname]
    if len(event_file) == 1 and pd.isna(event_file["event_label"].iloc[0]):
        return [{"filename": fname}]
    return event_file.to_dict("records")


def _desed_task_metrics(files, reference: dict, estimated: dict, classes: list[str]):
    """DESED_task's metric objects and its per-file evaluate calls, on per-file event lists."""
    event = sed_eval.sound_event.EventBasedMetrics(event_label_list=classes, t_collar=0.200, percentage_of_length=0.2,
                                                   empty_system_output_handling="zero_score")
    segment = sed_eval.sound_event.SegmentBasedMetrics(event_label_list=classes, time_resolution=1.0)
    for fname in files:
        event.evaluate(reference_event_list=reference[fname], estimated_event_list=estimated[fname])
    for fname in files:
        segment.evaluate(reference_event_list=reference[fname], estimated_event_list=estimated[fname])
    return event, segment


def desed_task_sed_eval(predictions: pd.DataFrame, groundtruth: pd.DataFrame) -> tuple[
        sed_eval.sound_event.EventBasedMetrics, sed_eval.sound_event.SegmentBasedMetrics]:
    """DESED_task's `compute_sed_eval_metrics(predictions, groundtruth)` on its tables: (event-based, segment-based)."""
    evaluated_files = groundtruth["filename"].unique()
    classes = list(set(list(groundtruth.event_label.dropna().unique()) + list(predictions.event_label.dropna().unique())))
    reference = {f: _event_list_current_file(groundtruth, f) for f in evaluated_files}
    estimated = {f: _event_list_current_file(predictions, f) for f in evaluated_files}
    return _desed_task_metrics(evaluated_files, reference, estimated, classes)


def sed_eval_f1(preds: Predictions, binary: np.ndarray) -> tuple[sed_eval.sound_event.SegmentBasedMetrics,
                                                                 sed_eval.sound_event.EventBasedMetrics]:
    """sed_eval segment- and event-based metrics of `binary` detections, called as DESED_task calls it.

    The per-file lists are built directly (the lists DESED_task's table lookups give, without their cost, which
    grows as clips x rows); `desed_task_sed_eval` runs the table route and a test checks both agree.
    """
    def records(cid, evs):
        return [{"filename": cid, "onset": e.onset, "offset": e.offset, "event_label": e.label} for e in evs]

    files = [str(c) for c in preds.clip_ids]
    detected = decode_events(binary, preds.encoder)
    reference = {f: records(f, evs) or [{"filename": f}] for f, evs in zip(files, preds.events)}
    estimated = {f: records(f, evs) for f, evs in zip(files, detected)}
    classes = list({e.label for evs in (*preds.events, *detected) for e in evs})
    event, segment = _desed_task_metrics(files, reference, estimated, classes)
    return segment, event


def sed_eval_segment_duration_bounded(preds: Predictions, binary: np.ndarray) -> sed_eval.sound_event.SegmentBasedMetrics:
    """The other convention: sed_eval segment-based with `evaluated_length_seconds` = the clip's duration."""
    seg = sed_eval.sound_event.SegmentBasedMetrics(list(preds.classes), time_resolution=1.0)
    for cid, ref, est, dur in zip(preds.clip_ids, preds.events, decode_events(binary, preds.encoder), preds.durations):
        seg.evaluate([{"filename": cid, "onset": e.onset, "offset": e.offset, "event_label": e.label} for e in ref],
                     [{"filename": cid, "onset": e.onset, "offset": e.offset, "event_label": e.label} for e in est],
                     evaluated_length_seconds=float(dur))
    return seg


def class_counts(metric, label: str) -> list[int]:
    """[TP, FP, FN] of one class of a sed_eval metric; a class absent from both tables has none."""
    cw = metric.class_wise.get(label)
    return [0, 0, 0] if cw is None else [int(cw["Ntp"]), int(cw["Nfp"]), int(cw["Nfn"])]


def psds_eval_values(preds: Predictions, probs: np.ndarray, scenarios, operating_points) -> dict[str, float]:
    from psds_eval import PSDSEval

    gt = pd.DataFrame([(c, e.onset, e.offset, e.label) for c, evs in zip(preds.clip_ids, preds.events) for e in evs],
                      columns=COLUMNS)
    meta = pd.DataFrame({"filename": preds.clip_ids, "duration": preds.durations})
    dets = [decode_events(probs > th, preds.encoder) for th in operating_points]
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for sc in scenarios:
            ev = PSDSEval(dtc_threshold=sc.dtc, gtc_threshold=sc.gtc, cttc_threshold=sc.cttc or 0.3,
                          ground_truth=gt, metadata=meta, class_names=list(preds.classes))
            for d in dets:
                ev.add_operating_point(pd.DataFrame(
                    [(c, e.onset, e.offset, e.label) for c, evs in zip(preds.clip_ids, d) for e in evs], columns=COLUMNS))
            out[sc.name] = float(ev.psds(alpha_ct=sc.alpha_ct, alpha_st=sc.alpha_st, max_efpr=sc.max_efpr).value)
    return out
