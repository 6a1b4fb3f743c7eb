"""How many of the rows a file names were really flipped by make_digits.py: precision and
recall against jobs/labels/flipped.json.

    python jobs/labels/check.py jobs/labels/cartography/selection.parquet \
        jobs/labels/out/label_issues.parquet
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent


def main(paths: list[str]) -> None:
    flipped = {int(i) for i in json.loads((HERE / "flipped.json").read_text())}
    for path in paths:
        named = set(pq.read_table(path, columns=["id"]).column("id").to_pylist())
        right = len(named & flipped)
        print(f"{path}: {len(named)} rows, {right} of them flipped: precision "
              f"{right / max(1, len(named)):.2f}, recall {right / len(flipped):.2f} "
              f"({len(flipped)} flipped)")


if __name__ == "__main__":
    main(sys.argv[1:])
