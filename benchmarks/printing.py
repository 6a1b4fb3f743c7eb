"""What every benchmark prints: the lines it also saves, its header, and fixed-width tables."""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
from importlib import metadata

__all__ = ["Out", "header", "package_version", "table"]


class Out:
    """Prints and keeps every line, for the results file."""

    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.extend(text.split("\n"))


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def header(out: Out, script: str, packages: tuple[str, ...], note: str = "") -> None:
    """The command as run, when and where, and the versions of ``packages``."""
    out(f"command: {' '.join([f'.venv/bin/python benchmarks/{script}', *sys.argv[1:]])}")
    out(f"run: {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}{note}")
    out("versions: " + ", ".join(f"{n} {package_version(n)}" for n in packages))


def table(out: Out, head: list[str], rows: list[list], widths: list[int]) -> None:
    """A fixed-width table, the first column left-aligned and the others right."""
    def fmt(values):
        return "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w)
                         for i, (v, w) in enumerate(zip(values, widths))).rstrip()
    out(fmt(head))
    out("  ".join("-" * w for w in widths))
    for row in rows:
        out(fmt(row))
