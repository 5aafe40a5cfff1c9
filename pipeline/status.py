"""`avsed status`: what a store holds (clips, features present/missing, video availability, partitions).

Reads only: the store opened read-only and the ledger with `Ledger(read_only=True)`, so it works on a store
the user may not write. A missing or damaged ledger is reported in the status, with what to do, instead of
failing it: the store's own numbers are still right.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.ledger import Ledger, LedgerCorruptError
from avsed.core.store import FeatureStore


def store_status(store_path: str | Path) -> dict[str, Any]:
    store = FeatureStore.open(store_path)
    n = store.n_clips
    features = {}
    for name in store.feature_names():
        present = int(store.present(name).sum())
        features[name] = {"present": present, "missing": n - present,
                          "weights": store.provenance(name).get("weights")}
    ledger_path = Ledger.path_for_store(store_path)
    videos: dict[str, Any] = {"available": 0, "missing": 0, "failed": 0, "reasons": {}}
    problems = 0
    ledger_state: dict[str, Any] = {"path": str(ledger_path), "state": "absent",
                                    "message": "no ledger: video availability unknown (the next extraction "
                                               "rebuilds it from the store)"}
    if ledger_path.exists():
        try:
            with Ledger(ledger_path, read_only=True) as ledger:
                videos.update(ledger.counts())
                problems = ledger.n_problems()
            ledger_state = {"path": str(ledger_path), "state": "ok", "message": ""}
        except LedgerCorruptError as exc:
            ledger_state = {"path": str(ledger_path), "state": "damaged", "message": str(exc)}
    partitions = dict(sorted(Counter(str(p) for p in store.partitions()).items()))
    return {"store": str(store_path), "clips": n, "features": features, "videos": videos,
            "ledger": ledger_state, "partitions": partitions, "problems": problems,
            "stats": {name: store.group[f"{name}_mean"].attrs.asdict()
                      for name in store.feature_names() if f"{name}_mean" in store.group}}


def format_status(status: dict[str, Any]) -> str:
    lines = [f"store {status['store']}: {status['clips']} clips"]
    lines.append("partitions: " + ", ".join(f"{k} {v}" for k, v in status["partitions"].items()))
    lines.append(f"{'feature':<10} {'present':>8} {'missing':>8}  weights")
    for name, f in status["features"].items():
        lines.append(f"{name:<10} {f['present']:>8} {f['missing']:>8}  {f['weights']}")
    ledger = status.get("ledger", {"state": "ok"})
    if ledger["state"] == "absent":
        lines.append(f"ledger {ledger['path']}: {ledger['message']}")
    elif ledger["state"] == "damaged":
        lines.append(f"ledger: {ledger['message']}")
    else:
        v = status["videos"]
        lines.append(f"videos: available {v['available']}, missing {v['missing']}, failed {v['failed']}")
        for reason, count in sorted(v.get("reasons", {}).items()):
            lines.append(f"  missing because {reason}: {count}")
        lines.append(f"recorded clip problems: {status['problems']}")
    return "\n".join(lines)
