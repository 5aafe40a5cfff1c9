"""Suite-wide: the files with end-to-end (slow) tests run first.

The suite runs on two processes, a file at a time each (`-n 2 --dist loadfile`, pyproject.toml). Handed out in
collection order, a long file that came last would run alone while the other process sat idle; handing the long
files out first lets the short ones fill in around them (longest first packs two processes well). The order within
a file is kept, and so is the order of the files within each of the two groups.
"""

from __future__ import annotations


def pytest_collection_modifyitems(config, items):
    slow_files = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow_files)  # stable: False (slow) first
