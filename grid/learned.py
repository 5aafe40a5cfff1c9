"""Beyond the paper: learned interpolation weights (training/gate.py) beside the fixed and random ones.

One table per grid run, after the paper's Tables 5-8 in tables.md, plus tableL.csv, tableL_split.csv and
tableL.png: for every bi- and tri-encoder that has learned-weight runs, its fixed-weight row (Table 5 or 8, the
training weight chosen as there), its random-weight row (Table 6 or 8) and its learned rows, the five metrics
over all eval clips as mean ± std over seeds; then the same models on the eval clips with and without video
(means, as Table 7), with the mean learned visual weight there.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from evaluation.evaluate import METRICS
from grid.plan import LEARNED_TABLE
from grid.tables import METRIC_COLUMNS, markdown, metric_rows, plot_rows, row_groups

if TYPE_CHECKING:
    from grid.runs import PaperRun, RunRecord

TITLE = ("Beyond the paper: learned interpolation weights beside fixed and random ones (values in %, mean ± std "
         "over seeds; learned models choose their weights per clip, so no inference audio weight is tuned)")
SPLIT_TITLE = "The same models on eval clips with and without video (means over seeds) and the learned visual weight"
SPLIT_COLUMNS = ["architecture", "model", "training weights", "eval subset", "seeds", "clips"] + list(METRICS) + \
    ["visual weight"]
SUBSETS = (("with_video", "with video"), ("without_video", "without video"))


def _scheme_label(scheme: str) -> str:
    return {"learned": "learned per clip", "learned_frame": "learned per frame"}[scheme]


def _table_of(encoders: tuple[str, ...], scheme: str) -> str:
    """Which of the paper's tables holds this model with fixed or random weights."""
    if len(encoders) > 2:
        return "8"
    return "5" if scheme == "fixed" else "6"


def _mean_std(values: list) -> tuple[float, float]:
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if not len(v):
        return float("nan"), float("nan")
    return float(100 * v.mean()), float(100 * v.std(ddof=1)) if len(v) > 1 else float("nan")


def _visual_weight(record: "RunRecord", subset: str) -> float | None:
    """Mean learned visual weight over the run's eval clips of the subset (clips with video: every kind that is
    not absent), from the summary evaluation wrote into result.json."""
    summary = (record.result.info.get("learned_weights") or {}) if record.result is not None else {}
    kinds = {k: v for k, v in summary.items() if (k == "absent") == (subset == "without_video")}
    clips = sum(v["clips"] for v in kinds.values())
    return sum(v["clips"] * v["visual_weight_mean"] for v in kinds.values()) / clips if clips else None


def _learned_models(paper: "PaperRun") -> list[tuple[str, str, tuple[str, ...]]]:
    seen: dict = {}
    for e in paper.entries:
        if e.table == LEARNED_TABLE:
            seen.setdefault((e.architecture, e.label, e.encoders), None)
    return list(seen)


def comparison_rows(paper: "PaperRun") -> list[dict]:
    """Per learned model: its fixed, random and learned rows, in that order (METRIC_COLUMNS keys)."""
    learned = row_groups(paper, LEARNED_TABLE)
    paper_rows = {t: metric_rows(paper, t) for t in ("5", "6", "8")}
    rows = []
    for arch, label, encoders in _learned_models(paper):
        for scheme in ("fixed", "random"):
            table = _table_of(encoders, scheme)
            rows += [r for r in paper_rows[table] if r["architecture"] == arch and r["model"] == label
                     and not r.get("note") and (r["training weights"] == "random") == (scheme == "random")]
        for (a, l, scheme), records in learned.items():
            if (a, l) != (arch, label):
                continue
            done = [r for r in records if r.result is not None]
            row = {"architecture": arch, "model": label, "training weights": _scheme_label(scheme),
                   "inference audio weight": "-", "seeds": len(done)}
            for m in METRICS:
                row[f"{m}_mean"], row[f"{m}_std"] = _mean_std([r.result.sets["all"].metrics.get(m) for r in done])
            rows.append(row)
    return rows


def comparison_split_rows(paper: "PaperRun") -> list[dict]:
    """The same models on the eval clips with and without video (means), learned ones with their visual weight."""
    groups = {}
    for table in ("5", "6", "8", LEARNED_TABLE):
        groups.update(row_groups(paper, table))
    rows = []
    for arch, label, encoders in _learned_models(paper):
        for (a, l, scheme), records in groups.items():
            if (a, l) != (arch, label) or scheme == "none" or records[0].entry.encoders != encoders:
                continue
            for key, name in SUBSETS:
                results = [r for r in records if r.result is not None and key in r.result.sets]
                if not results:
                    continue
                weights = {"fixed": "fixed", "random": "random"}.get(scheme) or _scheme_label(scheme)
                if scheme == "fixed":
                    weights = f"fixed (audio {records[0].entry.train_audio_weight:g})"
                row = {"architecture": arch, "model": label, "training weights": weights, "eval subset": name,
                       "seeds": len(results), "clips": results[0].result.sets[key].n_clips}
                for m in METRICS:
                    row[m] = _mean_std([r.result.sets[key].metrics.get(m) for r in results])[0]
                visual = [v for v in (_visual_weight(r, key) for r in results) if v is not None]
                row["visual weight"] = float(np.mean(visual)) if visual else float("nan")
                rows.append(row)
    return rows


def _write_csv(rows: list[dict], path: Path, columns: list[str]) -> Path:
    keys = columns + [c[:-5] + "_std" for c in columns if c.endswith("_mean")]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _split_markdown(rows: list[dict]) -> str:
    head = ["architecture", "model", "training weights", "eval subset", "seeds", "clips"] + \
        [m.upper() for m in METRICS] + ["visual weight"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---|---|---:|---:|" + "---:|" * (len(METRICS) + 1)]
    for r in rows:
        vals = [f"{r[m]:.2f}" if np.isfinite(r[m]) else "n/a" for m in METRICS]
        w = r["visual weight"]
        lines.append("| " + " | ".join([r["architecture"], r["model"], r["training weights"], r["eval subset"],
                                        str(r["seeds"]), str(r["clips"])] + vals +
                                       [f"{w:.3f}" if np.isfinite(w) else "-"]) + " |")
    return "\n".join(lines) + "\n"


def write_learned_tables(paper: "PaperRun", out_dir: str | Path) -> dict[str, Path]:
    """Append the comparison to out_dir/tables.md (written by grid.tables.write_tables just before) and write
    tableL.csv, tableL_split.csv and tableL.png; nothing when the grid has no learned-weight model."""
    out_dir = Path(out_dir)
    rows = comparison_rows(paper)
    if not _learned_models(paper):
        return {}
    split = comparison_split_rows(paper)
    md = out_dir / "tables.md"
    text = md.read_text() if md.exists() else ""
    text += f"\n## {TITLE}\n\n{markdown(rows, METRIC_COLUMNS)}\n### {SPLIT_TITLE}\n\n{_split_markdown(split)}"
    md.write_text(text)
    paths = {"tableL_csv": _write_csv(rows, out_dir / "tableL.csv", METRIC_COLUMNS),
             "tableL_split_csv": _write_csv(split, out_dir / "tableL_split.csv", SPLIT_COLUMNS)}
    if rows:
        paths["tableL_png"] = plot_rows(rows, out_dir / "tableL.png",
                                         "fixed, random and learned interpolation weights", split=False)
    return paths
