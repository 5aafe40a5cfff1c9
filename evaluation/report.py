"""Tables over seeds: the five metrics per model (paper Tables 5, 6, 8), the availability split (Table 7), the
split as differences to the audio-only model (the paper's claim: better with video, about equal without) and
class-wise F1s, as Markdown, CSV and a PNG.

Seeds of a model are averaged: mean ± sample std. With one seed there is no spread to show: the value stands
alone and the row says n = 1. A seed evaluated twice is refused rather than counted twice.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from evaluation.evaluate import METRICS, EvaluationResult

VIDEO_SPLITS = ("with_video", "without_video")  # the sets the paper's claim compares
SPLIT_SETS = VIDEO_SPLITS + ("with_video_audio_only",)


class ReportError(ValueError):
    """Results that cannot be reported together (the message names them and says what to do)."""


def load_results(paths: list[str | Path]) -> list[EvaluationResult]:
    """Each result file once (a path given twice, or through a link, is read once)."""
    seen, results = set(), []
    for p in paths:
        key = Path(p).resolve()
        if key not in seen:
            seen.add(key)
            results.append(EvaluationResult.load(p))
    return results


def group_by_model(results: list[EvaluationResult], key: str = "model") -> dict[str, list[EvaluationResult]]:
    """Seeds of the same model share `info[key]` (the run's model name); one evaluation per seed.

    An identical evaluation given twice is kept once; two different evaluations of one seed of one model
    (e.g. another audio weight written to another folder) are refused: averaging them would count a seed twice.
    """
    groups: dict[str, list[EvaluationResult]] = {}
    for r in results:
        rows = groups.setdefault(str(r.info.get(key, "model")), [])
        if any(o.to_dict() == r.to_dict() for o in rows):
            continue
        seed = r.info.get("seed")
        twin = next((o for o in rows if seed is not None and o.info.get("seed") == seed), None)
        if twin is not None:
            raise ReportError(f"report: two evaluations of seed {seed} of model {r.info.get(key)!r} "
                              f"({twin.info.get('checkpoint')}, {r.info.get('checkpoint')}): pass one evaluation per seed")
        rows.append(r)
    return groups


def _mean_std(values: list) -> tuple[float, float, int]:
    """Mean, sample std (NaN below two values: one seed has no spread) and the number of values."""
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if not len(v):
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan"), len(v)


def _summary(row: dict, name: str, values: list, scale: float = 100.0) -> None:
    mean, std, n = _mean_std(values)
    row[f"{name}_mean"], row[f"{name}_std"] = scale * mean, scale * std
    if n != row.get("seeds"):  # some seeds lack this value: say over how many it is
        row[f"{name}_n"] = n


def metrics_table(groups: dict[str, list[EvaluationResult]], set_name: str = "all",
                  metrics: tuple[str, ...] = METRICS) -> list[dict]:
    """One row per model that has `set_name`: mean and std over seeds of each metric (in %, as the paper)."""
    rows = []
    for model, results in groups.items():
        have = [r for r in results if set_name in r.sets]
        if not have:
            continue
        row: dict = {"model": model, "set": set_name, "clips": have[0].sets[set_name].n_clips, "seeds": len(have)}
        for m in metrics:
            _summary(row, m, [r.sets[set_name].metrics.get(m) for r in have])
        rows.append(row)
    return rows


def split_table(groups: dict[str, list[EvaluationResult]], metrics: tuple[str, ...] = METRICS) -> list[dict]:
    """Table 7: per model, the metrics on each availability subset (not "all": that is the metrics table)."""
    rows = []
    for model in groups:
        for set_name in SPLIT_SETS:
            rows += metrics_table({model: groups[model]}, set_name, metrics)
    return rows


def audio_only_baselines(groups: dict[str, list[EvaluationResult]], baseline: str | None = None) -> dict[str, str]:
    """For each multi-encoder model, the audio-only model it is compared with.

    `baseline` names one model for all; otherwise the audio-only model (one encoder) of the same architecture
    and the same network (student or teacher), when exactly one such model is in the results.
    """
    if baseline is not None:
        if baseline not in groups:
            raise ReportError(f"report: baseline model {baseline!r} is not among the results ({', '.join(groups)})")
        return {m: baseline for m in groups if m != baseline}

    def kind(m: str) -> tuple:
        info = groups[m][0].info
        return info.get("architecture"), bool(info.get("teacher", False))

    single = [m for m in groups if len(groups[m][0].info.get("encoders", [])) == 1]
    out = {}
    for m in groups:
        if m in single:
            continue
        matches = [b for b in single if kind(b) == kind(m)]
        if len(matches) == 1:
            out[m] = matches[0]
    return out


def split_differences(groups: dict[str, list[EvaluationResult]], baselines: dict[str, str],
                      metrics: tuple[str, ...] = METRICS) -> list[dict]:
    """Each model minus its audio-only baseline on the clips with and without video: difference of the means over
    seeds, in points (seeds of two models are independent runs, so they are not paired)."""
    rows = []
    for model, base in baselines.items():
        for set_name in VIDEO_SPLITS:
            mine = [r for r in groups[model] if set_name in r.sets]
            theirs = [r for r in groups[base] if set_name in r.sets]
            if not mine or not theirs:
                continue
            row: dict = {"model": model, "set": set_name, "baseline": base, "seeds": len(mine),
                         "baseline_seeds": len(theirs)}
            for m in metrics:
                a, _, _ = _mean_std([r.sets[set_name].metrics.get(m) for r in mine])
                b, _, _ = _mean_std([r.sets[set_name].metrics.get(m) for r in theirs])
                row[f"delta_{m}"] = 100 * a - 100 * b  # as the tables' % values are subtracted
            rows.append(row)
    return rows


def per_class_table(groups: dict[str, list[EvaluationResult]], metric: str = "ebf1", set_name: str = "all") -> list[dict]:
    rows = []
    for model, results in groups.items():
        have = [r for r in results if set_name in r.sets]
        if not have:
            continue
        row: dict = {"model": model, "metric": metric, "set": set_name, "seeds": len(have)}
        for c in have[0].classes:
            _summary(row, c, [r.sets[set_name].per_class[metric].get(c) for r in have])
        rows.append(row)
    return rows


def _cell(row: dict, name: str, decimals: int) -> str:
    mean, std = row[f"{name}_mean"], row[f"{name}_std"]
    if np.isnan(mean):
        return "n/a"
    text = f"{mean:.{decimals}f}" if np.isnan(std) else f"{mean:.{decimals}f} ± {std:.{decimals}f}"
    return text + (f" (n={row[f'{name}_n']})" if f"{name}_n" in row else "")


def to_markdown(rows: list[dict], decimals: int = 2, drop: tuple[str, ...] = ()) -> str:
    """Columns `<name>_mean` / `<name>_std` become one `mean ± std` column (the mean alone where one value);
    `delta_<name>` columns are signed differences."""
    if not rows:
        return ""
    cols = [k for k in rows[0] if not k.endswith(("_std", "_n")) and k not in drop]
    head = [k[:-5] if k.endswith("_mean") else ("Δ" + k[6:].upper() if k.startswith("delta_") else k) for k in cols]
    head = [h.upper() if h in METRICS else h.replace("_", " ") for h in head]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "".join("---:|" if k.endswith("_mean") or k.startswith("delta_") or k in ("clips", "seeds")
                           else "---|" for k in cols)]
    for row in rows:
        cells = []
        for k in cols:
            if k.endswith("_mean"):
                cells.append(_cell(row, k[:-5], decimals))
            elif k.startswith("delta_"):
                cells.append("n/a" if np.isnan(row[k]) else f"{row[k]:+.{decimals}f}")
            elif k == "set":
                cells.append(str(row[k]).replace("_", " "))
            else:
                cells.append(str(row[k]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], path: str | Path) -> Path:
    """Rows as CSV; a std that does not exist (one seed) is an empty cell, not 0."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows([{k: ("" if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
                          for row in rows])
    return path


def plot_split(groups: dict[str, list[EvaluationResult]], path: str | Path, baselines: dict[str, str]) -> Path:
    """Top: each model's five metrics on eval clips with and without video (error bars: std over seeds). Bottom:
    each model minus its audio-only baseline, in points (the paper's claim: above 0 with video, about 0 without)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(groups)
    others = [n for n in names if n in baselines]
    colours = {n: f"C{k}" for k, n in enumerate(names)}

    def stats(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
        rows = metrics_table({name: groups[name]}, split)
        if not rows:
            return np.full(len(METRICS), np.nan), np.full(len(METRICS), np.nan)
        return (np.array([rows[0][f"{m}_mean"] for m in METRICS]), np.array([rows[0][f"{m}_std"] for m in METRICS]))

    fig, axes = plt.subplots(2, len(VIDEO_SPLITS), figsize=(12, 7), sharey="row")
    x = np.arange(len(METRICS))
    for col, split in enumerate(VIDEO_SPLITS):
        ax = axes[0, col]
        width = 0.8 / len(names)
        for k, name in enumerate(names):
            mean, std = stats(name, split)
            ax.bar(x + (k - (len(names) - 1) / 2) * width, mean, width, color=colours[name], label=name,
                   yerr=None if np.all(np.isnan(std)) else np.nan_to_num(std), capsize=2)
        ax.set_title(f"eval clips {split.replace('_', ' ')}")
        ax.set_xticks(x, [m.upper() for m in METRICS])
        ax = axes[1, col]
        width = 0.8 / max(1, len(others))
        for k, name in enumerate(others):
            diffs = stats(name, split)[0] - stats(baselines[name], split)[0]
            ax.bar(x + (k - (len(others) - 1) / 2) * width, diffs, width, color=colours[name])
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xticks(x, [m.upper() for m in METRICS])
    axes[0, 0].set_ylabel("%")
    bases = sorted(set(baselines.values()))
    axes[1, 0].set_ylabel(f"minus {bases[0] if len(bases) == 1 else 'audio-only'}, points")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(names), frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _seeds_note(groups: dict[str, list[EvaluationResult]]) -> str:
    counts = sorted({len(rs) for rs in groups.values()})
    if counts == [1]:
        return "Values in %, one seed per model (n = 1): single values, no standard deviation."
    return ("Values in %, mean ± std over seeds (sample std; `seeds` says how many). A model with one seed shows "
            "its single value, without ±.")


def write_report(results: list[EvaluationResult], out_dir: str | Path, baseline: str | None = None) -> dict[str, Path]:
    """Markdown + CSV of the metrics, split, split-difference and class-wise EBF1 tables, and the split plot when
    there is a split to plot; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = group_by_model(results)
    baselines = audio_only_baselines(groups, baseline)
    tables = {"metrics": metrics_table(groups), "split": split_table(groups),
              "split_differences": split_differences(groups, baselines),
              "per_class_ebf1": per_class_table(groups, "ebf1")}
    titles = {"metrics": "All eval clips", "split": "Split by video availability (paper Table 7)",
              "split_differences": "Each model minus its audio-only model, points (the paper: better with video, "
                                   "about equal without)",
              "per_class_ebf1": "Class-wise EBF1"}
    paths: dict[str, Path] = {}
    md = [f"# Evaluation\n\n{_seeds_note(groups)}\n"]
    for name, rows in tables.items():
        paths[f"{name}_csv"] = write_csv(rows, out_dir / f"{name}.csv")
        if rows:
            md.append(f"## {titles[name]}\n\n{to_markdown(rows, drop=('set',) if name in ('metrics', 'per_class_ebf1') else ())}")
    if tables["split_differences"]:
        paths["split_png"] = plot_split(groups, out_dir / "split_by_video.png", baselines)
        md.append("![split by video](split_by_video.png)\n")
    paths["markdown"] = out_dir / "report.md"
    paths["markdown"].write_text("\n".join(md))
    return paths
