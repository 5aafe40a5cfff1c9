"""Suite-wide: the longest test files run first.

The suite runs on two processes, a file at a time each (`-n 2 --dist loadfile`, pyproject.toml), and the files are
handed out in collection order (`--no-loadscope-reorder`: pytest-xdist otherwise sorts them by their number of
tests, which put the one-test 100-s files last). Handed out longest first, the short ones fill in around the long
ones and the two processes end together (a 100-s file handed out last ran alone while the other process sat idle:
2026-12-07, 11 min 7 s with xdist's order, 10 min 2 s with this one). The files' seconds below were measured on
the 2-core machine (2026-12-07, the full suite, setup + call + teardown of each test); a file not listed is
ordered after them, the files with a `slow` test first. Only the order changes: a stale figure costs minutes at
worst, never a test.
"""

from __future__ import annotations

MEASURED_SECONDS = {
    "tests/detection/test_acceptance.py": 124,
    "tests/flows/test_paper_pool.py": 111,
    "tests/training/test_learning.py": 104,
    "tests/flows/test_prefect_deployment.py": 73,
    "tests/flows/test_extract_e2e.py": 72,  # 92 s measured; at 92 it went ahead of the deployment file: 12 min 48 s
    "tests/training/test_group.py": 70,
    "tests/training/test_compiled_step.py": 65,
    "tests/flows/test_signals.py": 64,
    "tests/flows/test_prefect_in_process.py": 45,
    "tests/avsed/test_demo.py": 44,
    "tests/flows/test_store_reliability.py": 44,
    "tests/flows/test_dask_runner.py": 38,
    "tests/grid/test_paper.py": 34,
    "tests/pipeline/test_download_session.py": 30,
    "tests/training/test_gate.py": 28,
    "tests/pipeline/test_streaming.py": 18,
    "tests/evaluation/test_gate.py": 17,
}


def file_order(path: str, slow_files: set[str]) -> tuple[int, float]:
    """Sort key of a test file: the measured ones longest first, then the other files with slow tests, then
    the rest (Python's sort is stable: collection order within each group)."""
    if path in MEASURED_SECONDS:
        return 0, -MEASURED_SECONDS[path]
    return (1 if path in slow_files else 2), 0.0


def pytest_collection_modifyitems(config, items):
    slow_files = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: file_order(item.nodeid.split("::")[0], slow_files))
