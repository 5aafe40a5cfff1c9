"""Tables over seeds: mean ± std of the five metrics per model (paper Tables 5, 6, 8), the availability split
(Table 7) and class-wise F1s, as Markdown and CSV.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from evaluation.evaluate import METRICS, EvaluationResult

SET_ORDER = ("all", "with_video", "without_video", "with_video_audio_only")


def load_results(paths: list[str | Path]) -> list[EvaluationResult]:
    return [EvaluationResult.load(p) for p in paths]


def group_by_model(results: list[EvaluationResult], key: str = "model") -> dict[str, list[EvaluationResult]]:
    """Seeds of the same model share `info[key]` (the run's model name)."""
    groups: dict[str, list[EvaluationResult]] = {}
    for r in results:
        groups.setdefault(str(r.info.get(key, "model")), []).append(r)
    return groups


def _mean_std(values: list[float]) -> tuple[float, float, int]:
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if not len(v):
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)


def metrics_table(groups: dict[str, list[EvaluationResult]], set_name: str = "all",
                  metrics: tuple[str, ...] = METRICS) -> list[dict]:
    """One row per model: mean and std over seeds of each metric (in %, as the paper)."""
    rows = []
    for model, results in groups.items():
        row: dict = {"model": model, "set": set_name, "seeds": len(results)}
        for m in metrics:
            mean, std, _ = _mean_std([r.sets[set_name].metrics.get(m) for r in results if set_name in r.sets])
            row[f"{m}_mean"], row[f"{m}_std"] = 100 * mean, 100 * std
        rows.append(row)
    return rows


def split_table(groups: dict[str, list[EvaluationResult]], metrics: tuple[str, ...] = METRICS) -> list[dict]:
    """Table 7: per model, the metrics on each availability set present in the results."""
    rows = []
    for set_name in SET_ORDER:
        if any(set_name in r.sets for rs in groups.values() for r in rs):
            rows += [row for row in metrics_table(groups, set_name, metrics) if not np.isnan(row[f"{metrics[0]}_mean"])]
    return rows


def per_class_table(groups: dict[str, list[EvaluationResult]], metric: str = "ebf1", set_name: str = "all") -> list[dict]:
    rows = []
    for model, results in groups.items():
        classes = results[0].classes
        row: dict = {"model": model, "metric": metric, "set": set_name}
        for c in classes:
            mean, std, _ = _mean_std([r.sets[set_name].per_class[metric].get(c) for r in results if set_name in r.sets])
            row[f"{c}_mean"], row[f"{c}_std"] = 100 * mean, 100 * std
        rows.append(row)
    return rows


def to_markdown(rows: list[dict]) -> str:
    """Columns `<name>_mean` / `<name>_std` become one `mean ± std` column."""
    if not rows:
        return ""
    keys = list(rows[0])
    cols = [k for k in keys if not k.endswith("_std")]
    head = [k[:-5] if k.endswith("_mean") else k for k in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = []
        for k in cols:
            if k.endswith("_mean"):
                mean, std = row[k], row[k[:-5] + "_std"]
                cells.append("n/a" if np.isnan(mean) else f"{mean:.2f} ± {std:.2f}")
            else:
                cells.append(str(row[k]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_report(results: list[EvaluationResult], out_dir: str | Path) -> dict[str, Path]:
    """Markdown + CSV of the metrics table, the split table and the class-wise EBF1 table; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = group_by_model(results)
    tables = {"metrics": metrics_table(groups), "split": split_table(groups),
              "per_class_ebf1": per_class_table(groups, "ebf1")}
    paths = {}
    md = []
    for name, rows in tables.items():
        paths[f"{name}_csv"] = write_csv(rows, out_dir / f"{name}.csv")
        md.append(f"## {name}\n\n{to_markdown(rows)}")
    paths["markdown"] = out_dir / "report.md"
    paths["markdown"].write_text("# Evaluation (values in %, mean ± std over seeds)\n\n" + "\n".join(md))
    return paths
