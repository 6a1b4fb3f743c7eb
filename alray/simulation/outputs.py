"""What a simulation writes and prints: learning curves, their summary, a plot and a table.

``curves.parquet`` holds one point per (strategy, repeat, round): ``labels`` (labeled rows when
the learner was trained) and ``accuracy`` (its test accuracy, in [0, 1]). The summary reduces each
strategy's curves over repeats:

- **AUC**: the mean test accuracy over a curve's points (the area under the curve divided by its
  width, the points being evenly spaced in labels); higher means better sooner. Its mean and
  sample standard deviation over repeats.
- **final accuracy**: the accuracy at the last round, mean and sd over repeats.
- **labels to match random**: the first labels count at which the strategy's mean curve reaches
  the baseline's final mean accuracy (null if it never does).
- **AUC gain**: the mean over repeats of (strategy's AUC - random's AUC) on the same split and
  initial rows, and **wins**: the repeats where it is above random's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from alray.simulation.spec import BASELINE, SimSpec

__all__ = ["CURVE_COLUMNS", "Point", "curves_table", "format_table", "plot_curves", "summarize",
           "write_outputs"]

CURVE_COLUMNS = ("strategy", "repeat", "round", "labels", "accuracy")
#: One curve point: (strategy, repeat, round, labels, accuracy).
Point = tuple[str, int, int, int, float]
_SCHEMA = pa.schema([("strategy", pa.string()), ("repeat", pa.int64()), ("round", pa.int64()),
                     ("labels", pa.int64()), ("accuracy", pa.float64())])


def curves_table(points: list[Point], order: list[str]) -> pa.Table:
    """The points as a table sorted by strategy (in ``order``), repeat and round."""
    rank = {name: i for i, name in enumerate(order)}
    points = sorted(points, key=lambda p: (rank[p[0]], p[1], p[2]))
    columns = list(zip(*points)) if points else [[] for _ in CURVE_COLUMNS]
    return pa.table(dict(zip(CURVE_COLUMNS, map(list, columns))), schema=_SCHEMA)


def _matrix(curves: pa.Table, strategy: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels ``[rounds + 1]``, accuracy ``[repeats, rounds + 1]``) of one strategy."""
    rows = curves.filter(pc.equal(curves.column("strategy"), strategy))
    repeats = len(set(rows.column("repeat").to_pylist()))
    accuracy = rows.column("accuracy").to_numpy().reshape(repeats, -1)
    labels = rows.column("labels").to_numpy()[: accuracy.shape[1]]
    return labels, accuracy


def _sd(values: np.ndarray) -> float | None:
    """Sample standard deviation (ddof 1); None for a single value."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def _strategy_summary(labels: np.ndarray, accuracy: np.ndarray, target: float,
                      baseline_auc: np.ndarray | None) -> dict[str, Any]:
    auc = accuracy.mean(axis=1)
    mean_curve = accuracy.mean(axis=0)
    reached = np.flatnonzero(mean_curve >= target - 1e-12)
    summary = {
        "auc_mean": float(auc.mean()), "auc_sd": _sd(auc),
        "auc_min": float(auc.min()), "auc_max": float(auc.max()),
        "final_accuracy_mean": float(accuracy[:, -1].mean()),
        "final_accuracy_sd": _sd(accuracy[:, -1]),
        "labels_to_match_random": int(labels[reached[0]]) if len(reached) else None,
        "auc_gain": None, "wins": None, "repeats": int(accuracy.shape[0]),
    }
    if baseline_auc is not None:
        summary["auc_gain"] = float((auc - baseline_auc).mean())
        summary["wins"] = int((auc > baseline_auc).sum())
    return summary


def summarize(spec: SimSpec, curves: pa.Table, rows: dict[str, int],
              timing: dict[str, Any]) -> dict[str, Any]:
    """``summary.json``'s content: the setting, per-strategy figures and timings.

    Args:
        rows: ``train_rows``, ``test_rows``, ``classes``.
        timing: seconds spent, as :func:`alray.simulation.loop.simulate` measured them.
    """
    order = [s.name for s in spec.strategies]
    labels, baseline = _matrix(curves, BASELINE)
    target = float(baseline[:, -1].mean())
    strategies = {}
    for name in order:
        labels, accuracy = _matrix(curves, name)
        strategies[name] = _strategy_summary(labels, accuracy, target,
                                             None if name == BASELINE else baseline.mean(axis=1))
    return {
        "name": spec.name, "dataset": spec.dataset, "learner": spec.learner,
        "initial": spec.initial, "batch": spec.batch, "rounds": spec.rounds,
        "repeats": spec.repeats, **rows, "random_final_accuracy": target,
        "strategies": strategies, "timing": timing, "spec": spec.to_dict(),
    }


# ----------------------------------------------------------------------------------- plot


def plot_curves(curves: pa.Table, summary: dict[str, Any], path: Path) -> None:
    """Mean test accuracy against labels per strategy, with its min-max band over repeats,
    random's final mean accuracy dotted; a PNG drawn with Agg (no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, figures in summary["strategies"].items():
        labels, accuracy = _matrix(curves, name)
        style = {"color": "black", "linestyle": "--"} if name == BASELINE else {}
        line, = axes.plot(labels, accuracy.mean(axis=0), marker=".", **style,
                          label=f"{name} (AUC {figures['auc_mean']:.3f})")
        axes.fill_between(labels, accuracy.min(axis=0), accuracy.max(axis=0), alpha=0.15,
                          color=line.get_color(), linewidth=0)
    axes.axhline(summary["random_final_accuracy"], color="grey", linestyle=":", linewidth=1,
                 label=f"random's final accuracy ({summary['random_final_accuracy']:.3f})")
    axes.set_xlabel("labeled rows")
    axes.set_ylabel("test accuracy")
    axes.set_title(f"{summary['name']}: learner {summary['learner']}, {summary['repeats']} "
                   "repeats (mean; band: min-max over repeats)", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, format="png")


# ----------------------------------------------------------------------------------- table


def _pm(mean: float, sd: float | None) -> str:
    return f"{mean:.3f} ± {sd:.3f}" if sd is not None else f"{mean:.3f}"


def _labels(value: int | None, baseline: int | None) -> str:
    if value is None:
        return "never"
    if not baseline or value == baseline:
        return f"{value}"
    return f"{value} ({(value - baseline) / baseline:+.0%})"


def _gain(figures: dict[str, Any]) -> str:
    if figures["auc_gain"] is None:
        return "baseline"
    return f"{figures['auc_gain']:+.3f} ({figures['wins']}/{figures['repeats']} repeats)"


def format_table(summary: dict[str, Any]) -> str:
    """The summary as a table a person reads, with a line on how to read it."""
    target = summary["random_final_accuracy"]
    last = summary["initial"] + summary["rounds"] * summary["batch"]
    baseline = summary["strategies"][BASELINE]["labels_to_match_random"]
    header = ("strategy", "AUC (mean ± sd)", "final accuracy", f"labels to reach {target:.3f}",
              "AUC vs random (wins)")
    rows = [(name, _pm(f["auc_mean"], f["auc_sd"]),
             _pm(f["final_accuracy_mean"], f["final_accuracy_sd"]),
             _labels(f["labels_to_match_random"], baseline), _gain(f))
            for name, f in summary["strategies"].items()]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    title = summary["name"] if summary["name"] == summary["dataset"] else \
        f"{summary['name']} ({summary['dataset']})"
    repeats = f"{summary['repeats']} repeat{'s' if summary['repeats'] != 1 else ''}"
    lines = [(f"{title}: learner {summary['learner']}, {repeats}, "
              f"{summary['initial']} -> {last} labels ({summary['batch']} per round); test "
              f"accuracy on {summary['test_rows']:,} rows"), ""]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
              for row in (header, *rows)]
    lines += ["", (f"AUC: mean test accuracy over the {summary['rounds'] + 1} points of a curve "
                   "(higher: better sooner). labels to reach: the first labels count where the "
                   f"mean curve reaches random's final mean accuracy ({target:.3f}); never: not "
                   f"within {last} labels. wins: repeats whose AUC beats random's on the same "
                   "split.")]
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    """NaN and infinities are not JSON: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_outputs(folder: Path, curves: pa.Table, summary: dict[str, Any]) -> dict[str, str]:
    """``curves.parquet``, ``summary.json`` and ``learning_curves.png`` under ``folder``."""
    paths = {"curves": folder / "curves.parquet", "summary": folder / "summary.json",
             "plot": folder / "learning_curves.png"}
    pq.write_table(curves, paths["curves"])
    paths["summary"].write_text(json.dumps(_json_safe(summary), indent=2) + "\n",
                                encoding="utf-8")
    plot_curves(curves, summary, paths["plot"])
    return {name: str(path) for name, path in paths.items()}
