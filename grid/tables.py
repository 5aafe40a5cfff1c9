"""The paper's Tables 5-8 from the evaluated grid (grid/plan.py, grid/run.py): Markdown, CSV and PNG.

Tables 5, 6 and 8: one row per architecture and model, the five metrics in % as mean ± std over seeds (the
paper reports 20 seeds); Table 7: the uni-encoder and fixed-weight bi-encoders on the eval clips with video,
without video and with video but the audio weight forced to 1, means only (as the paper, "to maintain
clarity"). Where several training audio weights were run for a fixed-weight model, the row shows the one with
the best mean validation EBF1 (the paper's selection) and names it. A model whose visual embedding the store
lacks keeps its row, marked as not in the store, so the layout is always the paper's.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from evaluation.evaluate import METRICS
from grid.plan import FEATURE_LABELS, TRI_ENCODER, VISUAL_FEATURES

if TYPE_CHECKING:
    from grid.runs import PaperRun, RunRecord

TABLES = {
    "5": "Table 5: uni- and bi-encoder models (fixed interpolation weights)",
    "6": "Table 6: bi-encoder models with random interpolation weights during training (audio ~ U(0.25, 1))",
    "7": "Table 7: split results on eval (with / without video; with video, audio weight forced to 1), means",
    "8": "Table 8: tri-encoder models (OpenL3 + TCE)",
}
SPLITS = (("with_video", "with video"), ("without_video", "without video"),
          ("with_video_audio_only", "with video, audio only"))
NOT_IN_STORE = "not in the store"


def _mean_std(values: list[float]) -> tuple[float, float]:
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if not len(v):
        return float("nan"), float("nan")
    return float(100 * v.mean()), float(100 * v.std(ddof=1)) if len(v) > 1 else float("nan")


def _weights_label(record: "RunRecord") -> str:
    e = record.entry
    if e.scheme == "fixed":
        n = len(e.encoders)
        return "/".join(f"{w:g}" for w in [e.train_audio_weight] + [(1 - e.train_audio_weight) / (n - 1)] * (n - 1))
    return {"none": "-", "random": "random"}.get(e.scheme, e.scheme)


def _chosen(records: list["RunRecord"]) -> list["RunRecord"]:
    """Of one row's runs (possibly several training audio weights), those of the best training weight by mean
    validation EBF1."""
    by_weight: dict = {}
    for r in records:
        by_weight.setdefault(r.entry.train_audio_weight, []).append(r)
    if len(by_weight) == 1:
        return records

    def score(rs):
        vals = [r.result.tuning.ebf1.validation_score for r in rs if r.result is not None]
        return (float(np.mean(vals)) if vals else -1.0, rs[0].entry.train_audio_weight or 0.0)
    return max(by_weight.values(), key=score)


def row_groups(paper: "PaperRun", table: str) -> dict[tuple, list["RunRecord"]]:
    """A table's runs by row (architecture, model, scheme), of the chosen training weight."""
    groups: dict[tuple, list] = {}
    for r in paper.runs:
        if r.entry.table == table:
            groups.setdefault((r.entry.architecture, r.entry.label, r.entry.scheme), []).append(r)
    return {k: _chosen(v) for k, v in groups.items()}


def _inference_weights(records: list["RunRecord"]) -> str:
    counts = Counter(r.result.info.get("audio_weight") for r in records if r.result is not None)
    if set(counts) <= {None}:
        return "-"
    return ", ".join(f"{w:g} ×{n}" for w, n in sorted(counts.items(), key=lambda x: -x[0]))


def metric_rows(paper: "PaperRun", table: str) -> list[dict]:
    """Rows of Table 5, 6 or 8 in the paper's order, with missing-feature rows marked."""
    groups = row_groups(paper, table)
    rows = []
    archs = list(dict.fromkeys(e.architecture for e in paper.entries)) or []
    for arch in archs:
        if table == "5":
            wanted = [("audio only", "none")] + [(FEATURE_LABELS[f], "fixed") for f in VISUAL_FEATURES]
        elif table == "6":
            wanted = [(FEATURE_LABELS[f], "random") for f in VISUAL_FEATURES]
        else:
            label = " + ".join(FEATURE_LABELS[f] for f in TRI_ENCODER)
            wanted = [(label, "fixed"), (label, "random")]
        for label, scheme in wanted:
            records = groups.get((arch, label, scheme))
            row: dict = {"architecture": arch, "model": label, "training weights": scheme}
            if not records:
                if any(FEATURE_LABELS[f] in label for f in paper.missing_features):
                    rows.append({**row, "note": NOT_IN_STORE})
                continue
            row["training weights"] = _weights_label(records[0])
            row["inference audio weight"] = _inference_weights(records)
            row["seeds"] = sum(1 for r in records if r.result is not None)
            for m in METRICS:
                row[f"{m}_mean"], row[f"{m}_std"] = _mean_std(
                    [r.result.sets["all"].metrics.get(m) for r in records if r.result is not None])
            rows.append(row)
    return rows


def split_rows(paper: "PaperRun") -> list[dict]:
    """Table 7: Table 5's audio-only and fixed-weight models on each eval subset (means over seeds)."""
    rows = []
    for (arch, label, scheme), records in row_groups(paper, "5").items():
        for key, name in SPLITS:
            results = [r.result for r in records if r.result is not None and key in r.result.sets]
            if not results:
                continue
            row = {"architecture": arch, "model": label, "eval subset": name, "seeds": len(results),
                   "clips": results[0].sets[key].n_clips}
            for m in METRICS:
                row[m] = _mean_std([r.sets[key].metrics.get(m) for r in results])[0]
            rows.append(row)
    return rows


def _cell(row: dict, key: str) -> str:
    if key.endswith("_mean"):
        mean, std = row.get(key, float("nan")), row.get(key[:-5] + "_std", float("nan"))
        if not np.isfinite(mean):
            return "n/a"
        return f"{mean:.2f}" + (f" ± {std:.2f}" if np.isfinite(std) else "")
    value = row.get(key, "")
    if isinstance(value, float):
        return "n/a" if not np.isfinite(value) else f"{value:.2f}"
    return str(value)


def markdown(rows: list[dict], columns: list[str]) -> str:
    heads = [c[:-5].upper() if c.endswith("_mean") else (c.upper() if c in METRICS else c) for c in columns]
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join("---:" if c in METRICS or c.endswith("_mean") or c in
                                                             ("seeds", "clips") else "---" for c in columns) + "|"]
    for row in rows:
        if row.get("note"):
            cells = [_cell(row, c) for c in columns[:3]] + [row["note"]] + [""] * (len(columns) - 4)
        else:
            cells = [_cell(row, c) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


METRIC_COLUMNS = ["architecture", "model", "training weights", "inference audio weight", "seeds"] + \
    [f"{m}_mean" for m in METRICS]
SPLIT_COLUMNS = ["architecture", "model", "eval subset", "seeds", "clips"] + list(METRICS)


def _write_csv(rows: list[dict], path: Path, columns: list[str]) -> Path:
    keys = columns + [c[:-5] + "_std" for c in columns if c.endswith("_mean")] + ["note"]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot_rows(rows: list[dict], path: Path, title: str, split: bool) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if not r.get("note")]
    labels = [f"{r['architecture']}\n{r['model']}\n" + (r["eval subset"] if split else r["training weights"])
              for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(rows) + 2), 4.2))
    width = 0.8 / len(METRICS)
    x = np.arange(len(rows))
    for k, m in enumerate(METRICS):
        means = np.array([r[m] if split else r[f"{m}_mean"] for r in rows], dtype=float)
        stds = None if split else np.nan_to_num(np.array([r[f"{m}_std"] for r in rows], dtype=float))
        ax.bar(x + (k - (len(METRICS) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=m.upper())
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("%")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=len(METRICS))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_tables(paper: "PaperRun", out_dir: str | Path) -> dict[str, Path]:
    """tables.md (all four tables), table<N>.csv and table<N>.png; returns the paths by name."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    seeds = sorted({r.seed for r in paper.runs})
    md = [f"# The paper's tables (values in %, mean ± std over {len(seeds)} seed{'s' * (len(seeds) != 1)}; "
          f"one seed shows no std)", ""]
    if paper.missing_features:
        md += [f"Not in the store: {', '.join(paper.missing_features)} (rows marked).", ""]
    for table, title in TABLES.items():
        rows = split_rows(paper) if table == "7" else metric_rows(paper, table)
        columns = SPLIT_COLUMNS if table == "7" else METRIC_COLUMNS
        md += [f"## {title}", "", markdown(rows, columns)]
        paths[f"table{table}_csv"] = _write_csv(rows, out_dir / f"table{table}.csv", columns)
        if any(not r.get("note") for r in rows):
            paths[f"table{table}_png"] = plot_rows(rows, out_dir / f"table{table}.png", title, split=table == "7")
    paths["markdown"] = out_dir / "tables.md"
    paths["markdown"].write_text("\n".join(md))
    return paths
