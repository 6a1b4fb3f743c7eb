"""The report's figures, drawn headless: matplotlib's ``Figure`` on an Agg canvas, never pyplot
(whose global figure registry is not thread-safe), each returned as PNG bytes.

:func:`plot_data_map` is public: a training-dynamics command draws the same map with it.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Any, BinaryIO, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from alray.errors import ConfigError
from alray.sources.files import Storage, atomic_write

__all__ = ["plot_scores", "plot_class_mix", "plot_confidence", "plot_data_map", "data_map_png",
           "class_name", "DATA_MAP_COLUMNS", "HEXBIN_ROWS", "MAX_CLASSES"]

#: Columns of a data map: the mean probability of the gold label over epochs, its standard
#: deviation, and the share of epochs that predicted it (Swayamdipta et al. 2020).
DATA_MAP_COLUMNS = ("gold_confidence", "gold_variability", "gold_correctness")
#: Above this many rows the data map draws cells (rows per cell, mean correctness per cell)
#: instead of one point per row.
HEXBIN_ROWS = 50_000
#: Cells along each axis of a large data map.
_MAP_CELLS = 60
#: Classes drawn one by one in the class mix; the rest are summed as "other".
MAX_CLASSES = 20
#: A count axis turns logarithmic when its largest nonzero bar is this many times its smallest.
LOG_SPAN = 100
_POOL, _SELECTED = "#4c72b0", "#dd8452"
_REASONS = {"score": "#c44e52", "diversity": "#dd8452", "explore": "#2ca02c"}


@contextlib.contextmanager
def _figure(width: float, height: float) -> Iterator[Any]:
    """A figure on its own Agg canvas; cleared on exit so nothing it drew outlives the PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    try:
        yield figure
    finally:
        figure.clear()


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _legend(figure, axes) -> None:
    """The legend under the plot, where it hides no bar."""
    handles, labels = axes.get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4),
                  fontsize=8, frameon=False)


def _log_if_wide(axes, counts: np.ndarray) -> None:
    """Logarithmic count axis when the nonzero counts span :data:`LOG_SPAN` or more."""
    nonzero = counts[counts > 0]
    if len(nonzero) and nonzero.max() >= LOG_SPAN * nonzero.min():
        axes.set_yscale("log")
        axes.set_ylabel(axes.get_ylabel() + " (log scale)")


def _plain(text: str) -> str:
    """``text`` shown as written: matplotlib reads ``$...$`` as math."""
    return text.replace("$", r"\$")


def class_name(index: int, classes: Sequence[str] | None) -> str:
    """``model.classes[index]`` where set, else the index."""
    return str(classes[index]) if classes and 0 <= index < len(classes) else str(index)


# ----------------------------------------------------------------------------------- scores


def plot_scores(edges: np.ndarray, counts: np.ndarray, selected: np.ndarray,
                reasons: Sequence[str], strategy: str, show_selected: bool) -> bytes:
    """Pool rows per score bin (``counts`` over ``edges``), the lowest selected score as a
    dashed line; with ``show_selected``, every selected score as a tick at the bottom, coloured
    by why it was selected (a diversity method or exploration takes rows below the top scores).
    """
    with _figure(8.5, 4.2) as figure:
        axes = figure.add_subplot()
        axes.stairs(counts, edges, fill=True, color=_POOL, alpha=0.55, label="pool")
        axes.set_ylabel("rows")
        _log_if_wide(axes, counts)
        if len(selected):
            cut = float(selected.min())
            axes.axvline(cut, color="black", linestyle="--", linewidth=1.2,
                         label=f"lowest selected score {cut:.4g}")
        if show_selected:
            _rug(axes, selected, reasons)
        axes.set_xlabel(f"score ({strategy}; higher = selected first)")
        axes.set_title(f"scores of {int(counts.sum()):,} pool rows, {len(selected):,} selected",
                       fontsize=10)
        axes.grid(alpha=0.3)
        _legend(figure, axes)
        return _png(figure)


def _rug(axes, selected: np.ndarray, reasons: Sequence[str]) -> None:
    """A short tick per selected row along the bottom of ``axes``, one colour per reason."""
    reasons = np.asarray(reasons, dtype=object)
    for reason in dict.fromkeys(reasons):
        rows = selected[reasons == reason]
        axes.vlines(rows, 0.0, 0.08, transform=axes.get_xaxis_transform(), linewidth=1.5,
                    alpha=0.9, color=_REASONS.get(reason, "black"),
                    label=f"selected, reason {reason} ({len(rows):,})")


# ----------------------------------------------------------------------------------- classes


def _class_bars(pool: np.ndarray, selected: np.ndarray,
                classes: Sequence[str] | None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Labels and shares of the classes to draw: all of them, or the :data:`MAX_CLASSES` - 1
    with the largest share in either group plus one bar for the rest."""
    size = max(len(pool), len(selected))
    pool = np.pad(pool, (0, size - len(pool))).astype(np.float64)
    selected = np.pad(selected, (0, size - len(selected))).astype(np.float64)
    pool_share = pool / max(pool.sum(), 1)
    selected_share = selected / max(selected.sum(), 1)
    if size <= MAX_CLASSES:
        order = np.arange(size)
        return [class_name(i, classes) for i in order], pool_share, selected_share
    order = np.sort(np.argsort(-np.maximum(pool_share, selected_share),
                               kind="stable")[:MAX_CLASSES - 1])
    rest = np.setdiff1d(np.arange(size), order)
    labels = [class_name(i, classes) for i in order] + [f"other ({len(rest)} classes)"]
    return (labels, np.append(pool_share[order], pool_share[rest].sum()),
            np.append(selected_share[order], selected_share[rest].sum()))


def plot_class_mix(pool: np.ndarray, selected: np.ndarray,
                   classes: Sequence[str] | None) -> bytes:
    """Share of rows per predicted class, the pool beside the selection (``pool`` and
    ``selected`` are counts by class index)."""
    labels, pool_share, selected_share = _class_bars(pool, selected, classes)
    positions = np.arange(len(labels))
    with _figure(max(6.0, 0.45 * len(labels) + 2.5), 4.2) as figure:
        axes = figure.add_subplot()
        axes.bar(positions - 0.2, pool_share, width=0.4, color=_POOL,
                 label=f"pool ({int(pool.sum()):,} rows)")
        axes.bar(positions + 0.2, selected_share, width=0.4, color=_SELECTED,
                 label=f"selection ({int(selected.sum()):,} rows)")
        long = max(map(len, labels)) > 3
        axes.set_xticks(positions, [_plain(label) for label in labels], rotation=40 if long else 0,
                        ha="right" if long else "center", fontsize=8)
        axes.set_xlabel("predicted class")
        axes.set_ylabel("share of rows")
        axes.yaxis.set_major_formatter(lambda value, _: f"{value:.0%}")
        axes.set_title("class mix: pool vs selection", fontsize=10)
        axes.grid(axis="y", alpha=0.3)
        _legend(figure, axes)
        return _png(figure)


# ----------------------------------------------------------------------------------- confidence


def plot_confidence(edges: np.ndarray, pool: np.ndarray, selected: np.ndarray) -> bytes:
    """Share of rows per bin of ``confidence`` (the predicted class's probability): the pool's
    counts over ``edges`` filled, the selected rows' values as a line over the same bins."""
    selected_counts = np.histogram(selected, edges)[0]
    with _figure(8.5, 4.0) as figure:
        axes = figure.add_subplot()
        axes.stairs(pool / max(pool.sum(), 1), edges, fill=True, color=_POOL, alpha=0.55,
                    label=f"pool ({int(pool.sum()):,} rows)")
        axes.stairs(selected_counts / max(len(selected), 1), edges, color=_SELECTED,
                    linewidth=2.0, label=f"selection ({len(selected):,} rows)")
        axes.set_xlim(edges[0], edges[-1])
        axes.set_xlabel("confidence: probability of the predicted class")
        axes.set_ylabel("share of rows")
        axes.yaxis.set_major_formatter(lambda value, _: f"{value:.0%}")
        axes.set_title("how sure the model is: pool vs selection", fontsize=10)
        axes.grid(alpha=0.3)
        _legend(figure, axes)
        return _png(figure)


# ----------------------------------------------------------------------------------- data map


def _data_map_arrays(data: pa.Table | Mapping[str, Any]) -> dict[str, Any]:
    """The data map's columns as float arrays, and ``region`` as ``{name: rows}`` where given
    (counted by Arrow for a table: millions of rows never become Python strings)."""
    names = data.column_names if isinstance(data, pa.Table) else list(data)
    missing = [name for name in DATA_MAP_COLUMNS if name not in names]
    if missing:
        raise ConfigError("data map", f"missing column(s) {', '.join(missing)}; a data map needs "
                                      f"{', '.join(DATA_MAP_COLUMNS)} (and optionally region)")
    get = (lambda n: data.column(n).to_numpy(zero_copy_only=False)) \
        if isinstance(data, pa.Table) else (lambda n: np.asarray(data[n]))
    arrays: dict[str, Any] = {name: get(name).astype(np.float64) for name in DATA_MAP_COLUMNS}
    if "region" in names:
        if isinstance(data, pa.Table):
            counted = pc.value_counts(data.column("region")).to_pylist()
            arrays["region"] = {str(c["values"]): c["counts"] for c in counted}
        else:
            found, counts = np.unique(np.asarray(data["region"]).astype(str), return_counts=True)
            arrays["region"] = dict(zip(found.tolist(), counts.tolist()))
    return arrays


def _region_note(regions: dict[str, int] | None) -> str:
    total = sum((regions or {}).values())
    if not total:
        return ""
    return "; ".join(f"{name} {regions[name] / total:.0%}" for name in sorted(regions))


def _frame(axes, variability: np.ndarray) -> None:
    axes.set_xlim(0.0, max(0.5, float(np.nanmax(variability, initial=0.0)) * 1.05))
    axes.set_ylim(0.0, 1.0)
    axes.set_xlabel("variability (sd of the gold label's probability over epochs)")
    axes.set_ylabel("confidence (mean probability of the gold label)")
    axes.grid(alpha=0.3)


def _binned(x: np.ndarray, y: np.ndarray, values: np.ndarray,
            x_top: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows and mean ``values`` per cell of a ``_MAP_CELLS`` square grid over
    ``[0, x_top] x [0, 1]``, each ``[cells_y, cells_x]`` (NaN where empty): one pass of
    ``bincount``, linear in the rows, so millions draw in well under a second."""
    n = _MAP_CELLS
    column = np.clip((x / x_top * n).astype(np.int64), 0, n - 1)
    row = np.clip((y * n).astype(np.int64), 0, n - 1)
    cell = row * n + column
    counts = np.bincount(cell, minlength=n * n).astype(np.float64)
    sums = np.bincount(cell, weights=values, minlength=n * n)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / counts
    counts[counts == 0] = np.nan
    return counts.reshape(n, n), mean.reshape(n, n)


def _cells(figure, x: np.ndarray, y: np.ndarray, correctness: np.ndarray) -> None:
    """Two panels of square cells: rows per cell (log colour scale), mean correctness."""
    from matplotlib.colors import LogNorm

    x_top = max(0.5, float(np.nanmax(x, initial=0.0)) * 1.05)
    counts, mean = _binned(x, y, correctness, x_top)
    density, right = figure.subplots(1, 2, sharey=True)
    extent = (0.0, x_top, 0.0, 1.0)
    shown = density.imshow(counts, origin="lower", extent=extent, aspect="auto", cmap="Blues",
                           norm=LogNorm(vmin=1, vmax=max(2.0, float(np.nanmax(counts)))),
                           interpolation="nearest")
    figure.colorbar(shown, ax=density, label="rows per cell")
    shown = right.imshow(mean, origin="lower", extent=extent, aspect="auto", cmap="RdYlBu",
                         vmin=0.0, vmax=1.0, interpolation="nearest")
    figure.colorbar(shown, ax=right, label="mean correctness per cell")
    for axes in (density, right):
        _frame(axes, x)
    right.set_ylabel("")


def data_map_png(data: pa.Table | Mapping[str, Any], title: str = "data map") -> bytes:
    """The data map of training dynamics (dataset cartography, Swayamdipta et al. 2020) as PNG
    bytes: each row at (variability, confidence), coloured by correctness. Up to
    :data:`HEXBIN_ROWS` rows one point each; above, two panels of square cells: rows per cell
    (log) and mean correctness per cell. ``region`` shares, where given, go in the title."""
    arrays = _data_map_arrays(data)
    x, y = arrays["gold_variability"], arrays["gold_confidence"]
    correctness, rows = arrays["gold_correctness"], len(x)
    note = _region_note(arrays.get("region"))
    title = f"{title}: {rows:,} rows" + (f" ({note})" if note else "")
    large = rows > HEXBIN_ROWS
    with _figure(13.0 if large else 7.5, 5.6) as figure:
        if large:
            _cells(figure, x, y, correctness)
        else:
            axes = figure.add_subplot()
            points = axes.scatter(x, y, c=correctness, s=6, alpha=0.7, cmap="RdYlBu",
                                  linewidths=0)
            figure.colorbar(points, ax=axes, label="correctness (share of epochs right)")
            _frame(axes, x)
        figure.suptitle(_plain(title), fontsize=10)
        return _png(figure)


def plot_data_map(data: pa.Table | Mapping[str, Any], path: str | os.PathLike | BinaryIO, *,
                  title: str = "data map", storage: Storage | None = None) -> None:
    """Draw the data map of training dynamics and write it as a PNG.

    Dataset cartography (Swayamdipta et al. 2020, "Dataset Cartography: Mapping and Diagnosing
    Datasets with Training Dynamics"): x is a row's variability (the standard deviation of the
    probability the model gives its gold label, over training epochs), y its confidence (the
    mean of that probability), colour its correctness (the share of epochs whose prediction was
    the gold label). Rows at the top left are easy to learn, at the bottom left hard to learn
    (often mislabeled), to the right ambiguous: the rows that help a model generalize.

    Args:
        data: a table or mapping with ``gold_confidence``, ``gold_variability`` and
            ``gold_correctness`` (numbers, one per row) and optionally ``region`` (strings).
        path: a local path or fsspec URL (written atomically), or an open binary file.
        title: the figure's title, before the row count.
        storage: fsspec options by protocol, for a URL.

    Raises:
        ConfigError: a column is missing.
    """
    png = data_map_png(data, title)
    if isinstance(path, (str, os.PathLike)):
        atomic_write(os.fspath(path), png, storage)
    else:
        path.write(png)
