"""``report(OUT)``: read an output folder, draw its plots, write the page and the PNGs."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from alray.errors import ConfigError
from alray.output.folder import OutputFolder
from alray.report import plots
from alray.report.page import Section, format_seconds, render_page
from alray.report.tally import PoolTally, SelectionView, read_selection, tally_pool
from alray.sources.files import Storage, access_refusals, open_parquet

__all__ = ["ReportResult", "report", "CURVES", "SIM_SUMMARY", "STATISTICS"]

#: What ``alray simulate`` writes (alray.simulation.outputs.write_outputs).
CURVES, SIM_SUMMARY = "curves.parquet", "summary.json"
#: Training dynamics, one row per training row: the data map's columns.
STATISTICS = OutputFolder.STATISTICS


@dataclass(frozen=True)
class ReportResult:
    """What :func:`report` wrote.

    Attributes:
        html: URI of the page (``OUT/report.html``).
        plots: URIs of the PNGs (``OUT/report/<plot>.png``), in page order.
        kind: ``job`` (a job's output folder) or ``simulation`` (an ``alray simulate`` folder).
    """

    html: str
    plots: tuple[str, ...]
    kind: str


def report(out: str, storage: Storage | None = None) -> ReportResult:
    """Write ``OUT/report.html``, one self-contained page on a finished job (or a simulation),
    and its plots as ``OUT/report/*.png``.

    Args:
        out: the output folder, a local path or any fsspec URL.
        storage: fsspec options by protocol (the job spec's ``storage`` section).

    Raises:
        ConfigError: ``OUT`` holds neither a finished job (``job.json`` and
            ``selection.parquet``) nor a simulation (``curves.parquet``, ``summary.json``), or
            the storage refused access.
    """
    folder = OutputFolder(out, dict(storage or {}))
    with access_refusals("OUT", out):
        has = _present(folder)
        if folder.read_json(folder.JOB) is None and has[CURVES]:
            page, pngs = _simulation_page(folder, has)
            return _write(folder, page, pngs, "simulation")
        job = folder.finished_job()
        if job.get("kind") == "cartography":
            page, pngs = _cartography_page(folder, job)
            return _write(folder, page, pngs, "cartography")
        page, pngs = _job_page(folder, job, has)
        return _write(folder, page, pngs, "job")


def _present(folder: OutputFolder) -> dict[str, bool]:
    fs, root = folder.fs()
    return {name: fs.exists(f"{root}/{name}")
            for name in (CURVES, SIM_SUMMARY, STATISTICS, folder.LABEL_ISSUES)}


def _write(folder: OutputFolder, page: str, pngs: dict[str, bytes], kind: str) -> ReportResult:
    """The PNGs, then the page (so a page never names a plot not yet written); PNGs of an
    earlier report that this one has not drawn are removed."""
    uris = tuple(folder.write(folder.path(folder.REPORT_PLOTS, f"{name}.png"), png)
                 for name, png in pngs.items())
    fs, _ = folder.fs()
    keep = {f"{name}.png" for name in pngs}
    for path in folder.listing(folder.REPORT_PLOTS):
        name = path.rsplit("/", 1)[-1]
        if name.endswith(".png") and name not in keep:
            fs.rm(path)
    html = folder.write(folder.path(folder.REPORT), page.encode("utf-8"))
    return ReportResult(html, uris, kind)


# ----------------------------------------------------------------------------------- job


def _job_page(folder: OutputFolder, job: dict[str, Any],
              has: dict[str, bool]) -> tuple[str, dict[str, bytes]]:
    spec = job["spec"]
    classes = spec.get("model", {}).get("classes")
    selection = read_selection(folder)
    tally = tally_pool(folder, selection)
    sections = [_scores_section(spec, tally, selection),
                *_class_sections(tally, selection, classes)]
    sections += _extra_sections(folder, has, job["name"])
    if has[folder.LABEL_ISSUES]:
        sections.append(_label_issues_section(folder, tally.rows, classes))
    formats = {"predicted": lambda v: f"{v} ({plots.class_name(v, classes)})"} if classes else {}
    page = render_page(
        f"alray report: {job['name']}",
        f"{folder.uri} · {job.get('status')} · finished {job.get('finished') or '—'} · "
        f"alray {job.get('alray_version')}",
        _job_summary(job, tally, selection), [s for _, s in sections], selection.top, formats,
        f"selection.parquet holds all {selection.rows:,} rows in rank order (0 = label first); "
        "uri is the row's source file, shard its scores file under scores/.")
    return page, {name: s.png for name, s in sections if s.png is not None}


def _job_summary(job: dict[str, Any], tally: PoolTally,
                 selection: SelectionView) -> list[tuple[str, str]]:
    spec, counts = job["spec"], job.get("counts", {})
    scored = f"{counts.get('rows_scored', tally.rows):,}"
    if tally.rows != counts.get("rows_scored", tally.rows):
        scored += f" (the scores files hold {tally.rows:,})"
    pool = f"{counts.get('rows_in', tally.rows):,} in {counts.get('shards', '?')} shards"
    lowest = f"{selection.scores.min():.4g}" if selection.rows else "—"
    model = f"{spec['model']['kind']} ({spec['model'].get('task', 'classification')})"
    rows = [
        ("rows in pool", pool), ("rows scored", scored),
        ("rows quarantined", f"{counts.get('rows_quarantined', 0):,}"),
        ("rows selected", f"{selection.rows:,}"), ("strategy", _strategy(spec["scoring"])),
        ("method", _method(spec["selection"])), ("k", f"{spec['selection']['k']:,}"),
        ("lowest selected score", lowest), ("model", model), ("run time", _run_time(job)),
    ]
    if tally.non_finite:
        rows.insert(2, ("non-finite scores", f"{tally.non_finite:,} (not in the histogram)"))
    return rows


def _strategy(scoring: dict[str, Any]) -> str:
    samples = scoring.get("mc_samples")
    return scoring["strategy"] + (f", {samples} MC samples" if samples else "")


def _method(chosen: dict[str, Any]) -> str:
    parts = [chosen["method"]]
    if chosen.get("explore"):
        parts.append(f"explore {chosen['explore']:.0%}")
    if chosen.get("balance", "none") != "none":
        parts.append(f"balance {chosen['balance']}")
    return ", ".join(parts)


def _run_time(job: dict[str, Any]) -> str:
    text, rate = format_seconds(job.get("seconds")), job.get("rows_per_second")
    if rate:
        text += f"; scoring {format_seconds(job.get('scoring_seconds'))} at {rate:,.0f} rows/s"
    return text


def _scores_section(spec: dict[str, Any], tally: PoolTally,
                    selection: SelectionView) -> tuple[str, Section]:
    strategy, method = spec["scoring"]["strategy"], spec["selection"]["method"]
    reasons = selection.reasons
    spread = method != "topk" or any(reason != "score" for reason in reasons)
    png = plots.plot_scores(tally.score_edges, tally.score_counts, selection.scores, reasons,
                            strategy, spread)
    read = ("the ticks along the bottom are the selected rows, coloured by why they were chosen: "
            f"{method} trades some score for variety, so some sit left of the highest scores"
            if spread else "with top-k the selection is every row right of the line, less any "
            "row a ledger excludes")
    caption = (f"How many pool rows have each {strategy} score (higher = more worth a label); "
               f"the dashed line is the lowest selected score, and {read}.")
    return "scores", Section("scores of the pool", caption, png)


def _class_sections(tally: PoolTally, selection: SelectionView,
                    classes: list[str] | None) -> list[tuple[str, Section]]:
    predicted = selection.predicted()
    if not tally.classification or predicted is None:
        note = ("A regression model predicts no class: no class mix and no confidence to show.")
        return [("class_mix", Section("class mix and confidence", note))]
    selected_counts = np.bincount(predicted.astype(np.int64), minlength=len(tally.class_counts))
    mix = plots.plot_class_mix(tally.class_counts, selected_counts, classes)
    confidence = plots.plot_confidence(tally.confidence_edges, tally.confidence_counts,
                                       tally.selected_confidences())
    return [
        ("class_mix", Section("class mix: pool vs selection", (
            "Share of rows per predicted class, pool beside selection: a class far taller in "
            "the selection is one the model is unsure of, and a class absent from it gets no "
            "labels from this batch."), mix)),
        ("confidence", Section("confidence: pool vs selection", (
            "Share of rows by the probability of their predicted class: an uncertainty "
            "strategy's selection sits left of the pool; a selection at high confidence means a "
            "diversity or exploration pick, or an over-confident model."), confidence)),
    ]


# ----------------------------------------------------------------------------------- extras


def _extra_sections(folder: OutputFolder, has: dict[str, bool],
                    name: str) -> list[tuple[str, Section]]:
    """Learning curves and the data map, where their files are in the folder."""
    sections = []
    if has[CURVES]:
        sections.append(_curves_section(folder, has))
    if has[STATISTICS]:
        sections.append(_data_map_section(folder, name))
    return sections


def _label_issues_section(folder: OutputFolder, rows: int,
                          classes: list[str] | None) -> tuple[str, Section]:
    """``label_issues.parquet``: how many rows confident learning flags, and the commonest
    (given, suggested) pairs, as a table."""
    flagged = _read_table(folder, folder.LABEL_ISSUES, ["given", "suggested"])
    pairs = flagged.group_by(["given", "suggested"]).aggregate([("given", "count")])
    pairs = pairs.sort_by([("given_count", "descending"), ("given", "ascending"),
                           ("suggested", "ascending")]).slice(0, 10).to_pylist()
    def name(index: int) -> str:
        return plots.class_name(index, classes)

    lines = ["given          suggested        rows"] + [
        f"{name(p['given']):<14} {name(p['suggested']):<14} {p['given_count']:>6,}"
        for p in pairs]
    share = f" ({flagged.num_rows / rows:.1%} of {rows:,})" if rows else ""
    caption = (f"Confident learning flags {flagged.num_rows:,} rows{share} whose given label is "
               "probably wrong (label_issues.parquet, likeliest first); the commonest mix-ups, "
               "given label against the model's class, are below.")
    return "label_issues", Section("labels probably wrong", caption,
                                   pre="\n".join(lines) if pairs else None)


def _read_table(folder: OutputFolder, name: str, columns: list[str] | None = None) -> pa.Table:
    with open_parquet(folder.path(name), folder.storage) as pf:
        return pf.read(columns=columns)


def _curves_section(folder: OutputFolder, has: dict[str, bool]) -> tuple[str, Section]:
    from alray.simulation.outputs import format_table, plot_curves

    summary = folder.read_json(SIM_SUMMARY) if has[SIM_SUMMARY] else None
    if not isinstance(summary, dict):
        return "learning_curves", Section("learning curves", (
            f"{CURVES} is here but {SIM_SUMMARY} is missing or unreadable: run alray simulate "
            "again to draw the curves."))
    buffer = io.BytesIO()
    try:
        plot_curves(_read_table(folder, CURVES), summary, buffer)
        table = format_table(summary)
    except KeyError as exc:
        raise _bad_summary(exc) from None
    caption = ("Mean test accuracy against labeled rows, per strategy (band: min to max over "
               "repeats): a curve above random's dashed one reaches the same accuracy with fewer "
               "labels.")
    return "learning_curves", Section("learning curves", caption, buffer.getvalue(), table)


def _bad_summary(exc: KeyError) -> ConfigError:
    return ConfigError("OUT", f"{SIM_SUMMARY} lacks the key {exc}; it was not written by this "
                              "version of alray simulate: run the simulation again")


def _data_map_section(folder: OutputFolder, name: str) -> tuple[str, Section]:
    with open_parquet(folder.path(STATISTICS), folder.storage) as pf:
        names = pf.schema_arrow.names
        missing = [c for c in plots.DATA_MAP_COLUMNS if c not in names]
        if missing:
            raise ConfigError("OUT", f"{STATISTICS} lacks column(s) {', '.join(missing)}; a data "
                                     f"map needs {', '.join(plots.DATA_MAP_COLUMNS)}")
        table = pf.read(columns=[*plots.DATA_MAP_COLUMNS, *(["region"] if "region" in names
                                                             else [])])
    caption = ("Each training row at its variability over epochs (x) and mean confidence in its "
               "gold label (y), coloured by the share of epochs it was right: top left is easy "
               "to learn, bottom left hard to learn (often mislabeled), the right ambiguous.")
    return "data_map", Section("data map of training dynamics", caption,
                               plots.data_map_png(table, f"{name}: data map"))


# ----------------------------------------------------------------------------------- cartography


def _cartography_page(folder: OutputFolder, job: dict[str, Any]) -> tuple[str, dict[str, bytes]]:
    """An `alray cartography` folder: the data map, the regions, and the rows to relabel."""
    counts, shares = job.get("counts", {}), job.get("shares", {})
    rows = counts.get("rows", 0)
    selection = read_selection(folder)
    classes = job["spec"].get("model", {}).get("classes")

    def region(name: str) -> str:
        n = counts.get(name, 0)
        return f"{n:,} ({n / rows:.0%})" if rows else "0"

    summary = [
        ("training log", ", ".join(job["spec"]["pool"]["uri"])),
        ("rows", f"{rows:,}"), ("epochs", str(counts.get("epochs", "?"))),
        ("classes", str(counts.get("classes", "?"))),
        ("hard to learn", f"{region('hard_to_learn')}: the {shares.get('hard', '?')} share "
                          "with the lowest confidence"),
        ("ambiguous", f"{region('ambiguous')}: the {shares.get('ambiguous', '?')} share with "
                      "the highest variability of the rest"),
        ("easy to learn", region("easy_to_learn")), ("rows selected", f"{selection.rows:,}"),
        ("run time", format_seconds(job.get("seconds"))),
    ]
    sections = [_data_map_section(folder, job["name"])]
    formats = ({name: (lambda v: f"{v} ({plots.class_name(v, classes)})")
                for name in ("predicted", "gold")} if classes else {})
    page = render_page(
        f"alray report: {job['name']} (training dynamics)",
        f"{folder.uri} · alray cartography · finished {job.get('finished') or '—'}",
        summary, [s for _, s in sections], selection.top, formats,
        "selection.parquet holds the hard-to-learn rows, lowest confidence in the gold label "
        "first (score = 1 - gold_confidence): send them for relabeling with alray export.")
    return page, {name: s.png for name, s in sections if s.png is not None}


# ----------------------------------------------------------------------------------- simulation


def _simulation_page(folder: OutputFolder, has: dict[str, bool]) -> tuple[str, dict[str, bytes]]:
    summary = folder.read_json(SIM_SUMMARY)
    if not isinstance(summary, dict):
        raise ConfigError("OUT", f"{folder.uri!r} holds {CURVES} but no readable {SIM_SUMMARY}; "
                                 "run alray simulate again")
    sections = [_curves_section(folder, has)]
    if has[STATISTICS]:
        sections.append(_data_map_section(folder, summary.get("name", "simulation")))
    try:
        rows = _simulation_summary(summary)
    except KeyError as exc:
        raise _bad_summary(exc) from None
    page = render_page(f"alray report: {summary.get('name')} (simulation)",
                       f"{folder.uri} · alray simulate", rows, [s for _, s in sections])
    return page, {name: s.png for name, s in sections if s.png is not None}


def _simulation_summary(summary: dict[str, Any]) -> list[tuple[str, str]]:
    last = summary["initial"] + summary["rounds"] * summary["batch"]
    labels = (f"{summary['initial']:,} → {last:,} ({summary['batch']:,} per round, "
              f"{summary['rounds']} rounds)")
    rows = (f"{summary.get('train_rows', 0):,} train, {summary.get('test_rows', 0):,} test, "
            f"{summary.get('classes', '?')} classes")
    timing = summary.get("timing") or {}
    run_time = format_seconds(timing.get("wall_seconds"))
    if timing.get("jobs"):
        run_time += f"; {timing['jobs']:,} jobs"
    return [
        ("dataset", str(summary["dataset"])), ("learner", str(summary["learner"])),
        ("labels", labels), ("repeats", str(summary["repeats"])), ("rows", rows),
        ("strategies", ", ".join(summary["strategies"])), ("run time", run_time),
    ]
