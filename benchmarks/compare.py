"""``python -m benchmarks --compare OLD.json NEW.json``: per-row ratios of two runs.

Why: a regression should be seen at a glance, not by reading two tables side
by side.  Rows are matched by their name (``what``); for every number both
runs have in a row's ``numbers``, it prints old, new and new/old.  Whether a
higher ratio is better depends on the figure (ms: lower is better, tasks/s:
higher), so the verdict change of each row is shown too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load_rows(path: Path) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
        rows = doc["comparisons"]
        return {row["what"]: row for row in rows}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a results file ({type(exc).__name__}: {exc})") from exc


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def lines(old: dict, new: dict) -> list[str]:
    out = []
    for what, row in new.items():
        before = old.get(what)
        if before is None:
            out.append(f"{what}: new row (verdict {row.get('verdict')})")
            continue
        head = f"{what}: verdict {before.get('verdict')} -> {row.get('verdict')}"
        out.append(head)
        for key, value in (row.get("numbers") or {}).items():
            was = (before.get("numbers") or {}).get(key)
            if _number(value) and _number(was):
                ratio = f"x{value / was:.2f}" if was else "-"
                out.append(f"    {key:<34} {was:>12.4g} -> {value:<12.4g} {ratio}")
    gone = [w for w in old if w not in new]
    out += [f"{what}: row gone" for what in gone]
    return out


def main(old_path: Path, new_path: Path) -> int:
    try:
        old, new = load_rows(old_path), load_rows(new_path)
    except ValueError as exc:
        print(f"--compare: {exc}", file=sys.stderr)
        return 2
    print(f"{old_path} -> {new_path} (new/old per figure)")
    print("\n".join(lines(old, new)))
    return 0
