"""Calls of the field's libraries (sed_eval, psds_eval, sed_scores_eval) used as references by the tests and benchmark."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import sed_eval

from evaluation.postprocess import decode_events
from evaluation.predictions import Predictions


def _event_dicts(clip_id, events):
    return [{"filename": clip_id, "event_onset": e.onset, "event_offset": e.offset, "event_label": e.label} for e in events]


def sed_eval_f1(preds: Predictions, binary: np.ndarray) -> tuple[sed_eval.sound_event.SegmentBasedMetrics,
                                                                 sed_eval.sound_event.EventBasedMetrics]:
    """sed_eval segment- and event-based metrics, clip by clip, as the DESED baseline calls them."""
    classes = list(preds.classes)
    seg = sed_eval.sound_event.SegmentBasedMetrics(classes, time_resolution=1.0)
    ev = sed_eval.sound_event.EventBasedMetrics(classes, t_collar=0.2, percentage_of_length=0.2,
                                                empty_system_output_handling="zero_score")
    for cid, ref, est, dur in zip(preds.clip_ids, preds.events, decode_events(binary, preds.encoder), preds.durations):
        r, e = _event_dicts(cid, ref), _event_dicts(cid, est)
        seg.evaluate(r, e, evaluated_length_seconds=float(dur))
        ev.evaluate(r, e)
    return seg, ev


def psds_eval_values(preds: Predictions, probs: np.ndarray, scenarios, operating_points) -> dict[str, float]:
    from psds_eval import PSDSEval

    cols = ["filename", "onset", "offset", "event_label"]
    gt = pd.DataFrame([(c, e.onset, e.offset, e.label) for c, evs in zip(preds.clip_ids, preds.events) for e in evs],
                      columns=cols)
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
                    [(c, e.onset, e.offset, e.label) for c, evs in zip(preds.clip_ids, d) for e in evs], columns=cols))
            out[sc.name] = float(ev.psds(alpha_ct=sc.alpha_ct, alpha_st=sc.alpha_st, max_efpr=sc.max_efpr).value)
    return out
