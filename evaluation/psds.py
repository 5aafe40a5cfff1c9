"""Polyphonic sound detection scores (PSDS1, PSDS2) on fixed operating points, psds_eval semantics.

The paper (3.1.4, Table 4) computes PSDS from 50 operating points, thresholds 0.01, 0.03, ..., 0.99,
with the DCASE 2021 scenarios. This module reproduces psds_eval 0.5.3 (DTC/GTC/CTTC criteria, FP and
cross-trigger rates per hour, staircase PSD-ROC, area up to max_efpr) with array operations over all
operating points at once; tests check it against psds_eval to 1e-6. The threshold-independent PSDS of
sed_scores_eval is offered beside it (`psds_threshold_independent`), labelled as such: it is not the
paper's number.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from evaluation.events import flatten_events
from evaluation.postprocess import frame_runs, median_filter_binary
from avsed.core.labels import ClipTiming, Event

SECONDS_PER_UNIT = {"minute": 60, "hour": 3600, "day": 24 * 3600}
# 0.01, 0.03, ..., 0.99: the paper's 50 operating points
OPERATING_POINTS: tuple[float, ...] = tuple(np.round(np.arange(50) * 0.02 + 0.01, 2).tolist())


@dataclass(frozen=True)
class PSDSScenario:
    name: str
    dtc: float
    gtc: float
    cttc: float | None
    alpha_ct: float
    alpha_st: float
    max_efpr: float = 100.0
    duration_unit: str = "hour"


PSDS1 = PSDSScenario("psds1", dtc=0.7, gtc=0.7, cttc=None, alpha_ct=0.0, alpha_st=1.0)
PSDS2 = PSDSScenario("psds2", dtc=0.1, gtc=0.1, cttc=0.3, alpha_ct=0.5, alpha_st=1.0)


@dataclass
class PSDSResult:
    """PSDS value and its PSD-ROC (x: effective FP rate per unit of time, y: effective TP ratio)."""

    scenario: PSDSScenario
    value: float
    efpr: np.ndarray
    etpr: np.ndarray
    class_tpr: np.ndarray  # (C, len(efpr)) per-class staircase TPR
    operating_points: np.ndarray

    def to_dict(self) -> dict:
        return {"scenario": asdict(self.scenario), "value": self.value, "efpr": self.efpr.tolist(),
                "etpr": self.etpr.tolist(), "class_tpr": np.nan_to_num(self.class_tpr).tolist(),
                "operating_points": self.operating_points.tolist()}


@dataclass(frozen=True)
class _GroundTruth:
    """The events of all clips as flat arrays, ordered by clip (events of clip i: first[i] .. first[i] + count[i])."""

    clip: np.ndarray  # (E,)
    onset: np.ndarray  # (E,)
    offset: np.ndarray  # (E,)
    label: np.ndarray  # (E,) class index
    first: np.ndarray  # (n,) index of each clip's first event
    count: np.ndarray  # (n,) number of events of each clip
    n_gt: np.ndarray  # (C,)
    gt_seconds: np.ndarray  # (C,) total ground-truth duration per class
    total_seconds: float
    frame_touch: np.ndarray  # (n, frames) bool: output frame overlaps some event (any class)


def _ground_truth(events: list[list[Event]], durations: np.ndarray, classes: tuple[str, ...],
                  bounds: np.ndarray) -> _GroundTruth:
    n, n_classes = len(events), len(classes)
    all_events = flatten_events(events, classes)
    flat = all_events.select(all_events.offset > all_events.onset)  # psds_eval drops zero-length events
    clip, onset, offset, label = flat.clip, flat.onset, flat.offset, flat.cls
    count = np.bincount(clip, minlength=n).astype(np.int64)
    n_gt = np.bincount(label, minlength=n_classes)
    gt_seconds = np.bincount(label, weights=offset - onset, minlength=n_classes)
    # strict overlap, as psds_eval's intersection test
    frame_touch = np.zeros((n, len(bounds) - 1), dtype=bool)
    touch = (bounds[None, :-1] < offset[:, None]) & (onset[:, None] < bounds[None, 1:])  # (E, frames)
    np.logical_or.at(frame_touch, clip, touch)
    return _GroundTruth(clip, onset, offset, label, np.cumsum(count) - count, count, n_gt, gt_seconds,
                        float(np.sum(durations)), frame_touch)


def _rates_chunk(binary: np.ndarray, gt: _GroundTruth, durations: np.ndarray, bounds: np.ndarray,
                 scenarios: tuple[PSDSScenario, ...], unit_seconds: float) -> dict[str, tuple]:
    """TPR (L, C), FPR (L, C), CTR (L, C, C) per scenario for (L, n, C, frames) binary detections."""
    n_lead, n, n_classes = binary.shape[:3]
    n_events = len(gt.label)
    all_runs = frame_runs(binary, time_axis=-1)
    all_on, all_off = bounds[all_runs.start], bounds[all_runs.stop]
    all_in_world = (all_on < durations[all_runs.clip]) & (all_off > 0)
    all_lead_cls = all_runs.lead * n_classes + all_runs.cls
    # only detections that touch some ground truth need the pairwise (detection, event) arithmetic; the
    # others fail the DTC and cross-trigger nothing: a run touches an event iff one of its frames does
    frame_touch = np.cumsum(np.concatenate([np.zeros((n, 1), dtype=np.int64), gt.frame_touch.astype(np.int64)], axis=1), axis=-1)
    touching = frame_touch[all_runs.clip, all_runs.stop] > frame_touch[all_runs.clip, all_runs.start]
    runs_clip, runs_cls, runs_lead = all_runs.clip[touching], all_runs.cls[touching], all_runs.lead[touching]
    on, off = all_on[touching], all_off[touching]
    dur = off - on
    n_runs = len(on)
    # (detection, event of its clip) pairs, kept where they intersect: all later sums run over these only
    per_run = gt.count[runs_clip]
    pair_run = np.repeat(np.arange(n_runs), per_run)
    pair_ev = np.repeat(gt.first[runs_clip] - (np.cumsum(per_run) - per_run), per_run) + np.arange(len(pair_run))
    inter = np.minimum(off[pair_run], gt.offset[pair_ev]) - np.maximum(on[pair_run], gt.onset[pair_ev])
    hit = inter > 0
    pair_run, pair_ev, inter = pair_run[hit], pair_ev[hit], inter[hit]
    pair_label = gt.label[pair_ev]
    same = pair_label == runs_cls[pair_run]
    precision = inter / dur[pair_run]
    dtc_sum = np.bincount(pair_run, weights=np.where(same, precision, 0.0), minlength=n_runs)
    touches_same = np.bincount(pair_run[same], minlength=n_runs) > 0
    coverage_of_pair = inter / (gt.offset - gt.onset)[pair_ev]
    lead_cls = runs_lead * n_classes + runs_cls
    # detections touching no event fail the DTC: false positives when inside the clip (psds_eval's WORLD)
    fp_untouched = np.bincount(all_lead_cls[~touching & all_in_world], minlength=n_lead * n_classes)
    in_world = all_in_world[touching]
    out = {}
    for sc in scenarios:
        dtc_pass = touches_same & (dtc_sum >= sc.dtc)
        sel = same & dtc_pass[pair_run]
        coverage = np.bincount(runs_lead[pair_run[sel]] * n_events + pair_ev[sel], weights=coverage_of_pair[sel],
                               minlength=n_lead * n_events).reshape(n_lead, n_events)
        lead_of, event_of = np.nonzero((coverage >= sc.gtc) & (coverage > 0))
        tp = np.bincount(lead_of * n_classes + gt.label[event_of], minlength=n_lead * n_classes).reshape(n_lead, n_classes)
        fp = np.bincount(lead_cls[~dtc_pass & in_world], minlength=n_lead * n_classes) + fp_untouched
        fp = fp.reshape(n_lead, n_classes)
        with np.errstate(invalid="ignore", divide="ignore"):
            tpr = np.where(gt.n_gt > 0, tp / np.maximum(gt.n_gt, 1), np.nan)
        fpr = fp * unit_seconds / gt.total_seconds
        ctr = np.full((n_lead, n_classes, n_classes), np.nan)
        if sc.alpha_ct > 0:
            cttc = 0.0 if sc.cttc is None else sc.cttc
            ct_sum = np.bincount(pair_run * n_classes + pair_label, weights=precision,
                                 minlength=n_runs * n_classes).reshape(n_runs, n_classes)
            ct_hit = (~dtc_pass)[:, None] & (ct_sum >= cttc) & (ct_sum > 0)
            ct_hit[np.arange(n_runs), runs_cls] = False
            det_i, k = np.nonzero(ct_hit)
            counts = np.bincount(lead_cls[det_i] * n_classes + k, minlength=n_lead * n_classes * n_classes)
            with np.errstate(invalid="ignore", divide="ignore"):
                ctr = counts.reshape(n_lead, n_classes, n_classes) * unit_seconds / gt.gt_seconds[None, None, :]
            ctr[:, np.arange(n_classes), np.arange(n_classes)] = np.nan
        out[sc.name] = (tpr, fpr, ctr)
    return out


def _auc(x: np.ndarray, y: np.ndarray, max_x: float) -> float:
    """Staircase area as psds_eval's `_auc` (rectangles, the curve extended flat to max_x)."""
    if max_x not in x:
        x = np.sort(np.concatenate([x, [max_x]]))
        i = int(np.flatnonzero(x == max_x)[0])
        y = np.concatenate([y[:i], [y[i - 1]], y[i:]])
    valid = x <= max_x
    return float(np.sum(np.diff(x[valid]) * y[valid][:-1]))


def psds_from_rates(tpr: np.ndarray, fpr: np.ndarray, ctr: np.ndarray, scenario: PSDSScenario,
                    operating_points: np.ndarray) -> PSDSResult:
    """PSD-ROC and PSDS from per-operating-point rates (tpr, fpr: (T, C); ctr: (T, C, C))."""
    n_classes = tpr.shape[1]
    # a zero operating point (no detections) is appended, as psds_eval does
    tpr_c = np.concatenate([tpr.T, np.zeros((n_classes, 1))], axis=1)
    fpr_c = np.concatenate([fpr.T, np.zeros((n_classes, 1))], axis=1)
    if scenario.alpha_ct > 0:
        with np.errstate(invalid="ignore"):
            mean_ct = np.nanmean(np.transpose(ctr, (1, 2, 0)), axis=1)  # (C, T)
        efpr = fpr_c + scenario.alpha_ct * np.concatenate([mean_ct, np.zeros((n_classes, 1))], axis=1)
    else:
        efpr = fpr_c
    xs = np.unique(efpr)
    class_tpr = np.full((n_classes, xs.size), np.nan)
    for c in range(n_classes):
        if np.all(np.isnan(tpr_c[c])):
            continue
        order = np.argsort(efpr[c], kind="stable")
        best = np.maximum.accumulate(tpr_c[c][order])
        idx = np.searchsorted(efpr[c][order], xs, side="right") - 1
        class_tpr[c] = np.where(idx >= 0, best[np.maximum(idx, 0)], 0.0)
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(class_tpr, axis=0)
        std = np.nanstd(class_tpr, axis=0)
    etpr = np.nan_to_num(mean - scenario.alpha_st * std, nan=0.0)
    etpr = np.where(etpr < 0, 0.0, etpr)
    value = _auc(xs, etpr, scenario.max_efpr) / scenario.max_efpr
    return PSDSResult(scenario, value, xs, etpr, class_tpr, np.asarray(operating_points))


def psds_scores(frame_probs: np.ndarray, events: list[list[Event]], durations: np.ndarray,
                classes: tuple[str, ...], timing: ClipTiming,
                scenarios: tuple[PSDSScenario, ...] = (PSDS1, PSDS2),
                operating_points: tuple[float, ...] = OPERATING_POINTS,
                median_filter: int | np.ndarray = 1, chunk: int = 10) -> dict[str, PSDSResult]:
    """PSDS per scenario of (n, frames, C) probabilities thresholded (strict `>`) at each operating point.

    `median_filter`: size (or per-class sizes) applied to the binary decisions; 1 (none) by default,
    the paper names no filter for its operating points.
    """
    durations = np.asarray(durations, dtype=np.float64)
    bounds = timing.frame_to_time(np.arange(timing.output_frames + 1))
    gt = _ground_truth(events, durations, classes, bounds)
    units = {sc.duration_unit for sc in scenarios}
    if len(units) != 1:
        raise ValueError("all scenarios must use the same duration unit")
    unit_seconds = SECONDS_PER_UNIT[units.pop()]
    thresholds = np.asarray(operating_points, dtype=np.float64)
    sizes = np.broadcast_to(np.asarray(median_filter, dtype=np.int64), (len(classes),))
    parts: dict[str, list] = {sc.name: [] for sc in scenarios}
    probs = np.ascontiguousarray(np.swapaxes(frame_probs, -1, -2))  # (n, C, frames): rows along time
    for lo in range(0, len(thresholds), chunk):
        binary = probs[None] > thresholds[lo:lo + chunk, None, None, None]
        if np.any(sizes > 1):
            for c in range(len(classes)):
                binary[..., c:c + 1, :] = median_filter_binary(binary[..., c:c + 1, :], int(sizes[c]), axis=-1)
        for name, rates in _rates_chunk(binary, gt, durations, bounds, scenarios, unit_seconds).items():
            parts[name].append(rates)
    results = {}
    for sc in scenarios:
        tpr, fpr, ctr = (np.concatenate([p[k] for p in parts[sc.name]]) for k in range(3))
        results[sc.name] = psds_from_rates(tpr, fpr, ctr, sc, thresholds)
    return results


def psds_threshold_independent(frame_probs: np.ndarray, events: list[list[Event]], durations: np.ndarray,
                               clip_ids: np.ndarray, classes: tuple[str, ...], timing: ClipTiming,
                               scenario: PSDSScenario) -> float:
    """Exact PSDS over all thresholds with sed_scores_eval (NOT the paper's 50-point value; ~2 s per scenario)."""
    from sed_scores_eval.base_modules.scores import create_score_dataframe
    from sed_scores_eval.intersection_based import psds as sse_psds

    bounds = timing.frame_to_time(np.arange(timing.output_frames + 1))
    scores = {str(cid): create_score_dataframe(np.asarray(p, dtype=np.float64), bounds, list(classes))
              for cid, p in zip(clip_ids, frame_probs)}
    truth = {str(cid): [(ev.onset, ev.offset, ev.label) for ev in evs if ev.offset > ev.onset]
             for cid, evs in zip(clip_ids, events)}
    value, *_ = sse_psds(scores, truth, {str(c): float(d) for c, d in zip(clip_ids, durations)},
                         dtc_threshold=scenario.dtc, gtc_threshold=scenario.gtc,
                         cttc_threshold=scenario.cttc, alpha_ct=scenario.alpha_ct, alpha_st=scenario.alpha_st,
                         unit_of_time=scenario.duration_unit, max_efpr=scenario.max_efpr)
    return float(value)
