"""The ``alray`` command line.

Exit status: 0 the job finished; 1 the job failed; 2 usage or configuration error; 130
interrupted (the same command resumes). Errors are one line on stderr
(``alray: error: <where>: <what>; <what to do>``); ``--debug`` adds the traceback. Nothing here
imports torch or Ray until a command needs them, so ``--help`` and spec errors come back at once.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _add_spec_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("spec", metavar="JOB.yaml")
    command.add_argument("--set", dest="overrides", action="append", default=[],
                         metavar="KEY=VALUE",
                         help="set one dotted spec key, e.g. scoring.strategy=margin")
    command.add_argument("--out", help="output URI (overrides output.uri)")
    command.add_argument("--fresh", action="store_true",
                         help="ignore earlier outputs and start over")
    command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)


def _parser() -> argparse.ArgumentParser:
    from alray import __version__

    parser = argparse.ArgumentParser(prog="alray", description="Select the rows of a huge "
                                     "unlabeled pool that are worth labeling, on Ray.")
    parser.add_argument("--version", action="version", version=f"alray {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="the main job on a local Ray, on scikit-learn digits")
    demo.add_argument("--out", default="alray-demo", help="output folder (overwritten)")
    demo.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)

    run = commands.add_parser("run", help="run a job spec")
    _add_spec_options(run)
    run.add_argument("--address", help="Ray address to join ('auto' joins a running cluster)")
    run.add_argument("--dry-run", action="store_true",
                     help="plan only, as `alray plan` does: nothing runs, Ray does not start")
    run.add_argument("--ledger", metavar="URI",
                     help="append the selection to this ledger as sent (a folder or prefix; "
                          "name it in selection.exclude so later runs skip these ids)")
    run.add_argument("--quiet", action="store_true",
                     help="no progress on stderr (errors and the summary still print)")

    plan = commands.add_parser("plan", help="check a job spec against its pool and model, and "
                                            "show what a run would do, without starting Ray")
    _add_spec_options(plan)

    status = commands.add_parser("status", help="progress of a running or stopped job")
    status.add_argument("out", metavar="OUT|SPEC",
                        help="the job's output folder, or its spec (.yaml: its output.uri, with "
                             "its storage options)")
    status.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)

    simulate = commands.add_parser("simulate", help="an active-learning loop on the real engine: "
                                                    "does a strategy beat random? (on a labeled "
                                                    "dataset)")
    simulate.add_argument("spec", metavar="SIM.yaml")
    simulate.add_argument("--out", help="output folder (default: the spec's out, else "
                                        "<name>-sim beside the spec); an earlier simulation's "
                                        "folder is replaced")
    simulate.add_argument("--quiet", action="store_true",
                          help="no progress on stderr (the table still prints)")
    simulate.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    _add_export(commands)
    _add_import_labels(commands)
    report = commands.add_parser("report", help="one self-contained HTML page with plots of a "
                                                "job (or a simulation): OUT/report.html")
    report.add_argument("out", metavar="OUT|SPEC",
                        help="the job's output folder (or a simulation's), or its spec")
    report.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    _add_submit(commands)
    _add_cartography(commands)
    return parser


def _add_cartography(commands) -> None:
    carto = commands.add_parser("cartography", help="training dynamics -> data map, and the "
                                                    "labels most likely wrong, to relabel")
    carto.add_argument("dynamics", metavar="DYNAMICS",
                       help="folder (or glob, or fsspec URL) of per-epoch parquet or JSON-lines "
                            "files, or a folder holding training_dynamics/")
    carto.add_argument("--out", required=True, help="output folder (any fsspec URL)")
    carto.add_argument("--hard", type=float, default=0.33,
                       help="share of rows that are hard to learn: the lowest confidence "
                            "(default 0.33)")
    carto.add_argument("--ambiguous", type=float, default=0.33,
                       help="share of rows that are ambiguous: the highest variability of the "
                            "rest (default 0.33)")
    carto.add_argument("--k", type=int, help="select at most K hard-to-learn rows (default: all)")
    carto.add_argument("--classes", metavar="A,B,...", help="class names by index, for exports")
    carto.add_argument("--carry", action="append", default=[], metavar="COLUMN",
                       help="a log column to carry into the selection (the text or URI an "
                            "annotator needs); repeat for more")
    for name, what in (("id", "ids (default: id or guid)"),
                       ("label", "given labels (default: gold or label)"),
                       ("logits", "logits (default: logits or logits_epoch_N)"),
                       ("probs", "probabilities (default: probs or probs_epoch_N)")):
        carto.add_argument(f"--{name}-column", metavar="COLUMN", help=f"the column of {what}")
    carto.add_argument("--quiet", action="store_true", help="no progress on stderr")
    carto.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)


def _add_submit(commands) -> None:
    submit = commands.add_parser("submit", help="run a job on a Ray cluster through its Jobs "
                                                "API (the spec and its local files travel)")
    _add_spec_options(submit)
    submit.add_argument("--address", required=True, metavar="http://HEAD:8265",
                        help="the head's dashboard address")
    submit.add_argument("--wait", action="store_true",
                        help="stream the job's logs and exit with its status")
    submit.add_argument("--pip", action="store_true",
                        help="ship this alray and pip-install its dependencies on the cluster "
                             "(for a cluster without alray)")
    submit.add_argument("--shared-paths", action="store_true",
                        help="local paths in the spec are on storage every node mounts at the "
                             "same path: use them as given")
    submit.add_argument("--timeout", type=float, default=60.0,
                        help="with --wait: seconds the head may go without answering before "
                             "the wait ends (the job goes on; default 60)")


def _add_export(commands) -> None:
    export = commands.add_parser("export", help="send a job's selection to annotators: Label "
                                                "Studio, SageMaker Ground Truth, CSV or JSON lines")
    export.add_argument("out", metavar="OUT|SPEC",
                        help="the job's output folder, or its spec (its output.uri and storage)")
    export.add_argument("--format", required=True,
                        choices=["label-studio", "sagemaker", "csv", "jsonl"])
    export.add_argument("--to", metavar="URI",
                        help="a file (any fsspec URL; default OUT/exports/...), or a Label Studio "
                             "project http(s)://HOST/projects/ID to push the tasks to (token from "
                             "$LABEL_STUDIO_API_KEY)")
    export.add_argument("--ledger", metavar="URI",
                        help="record the exported ids in this ledger as sent")
    export.add_argument("--round", type=int, help="the ledger round (default: its next)")
    export.add_argument("--data-field", dest="data_fields", action="append", default=[],
                        metavar="NAME=COLUMN",
                        help="label-studio: put carried COLUMN in the tasks' data as NAME "
                             "(e.g. image=image_uri)")
    export.add_argument("--uri-column", metavar="COLUMN",
                        help="sagemaker: the column with each row's object URI or text")
    export.add_argument("--create-project", metavar="TITLE",
                        help="label-studio: make a project (config from model.classes) on the "
                             "server --to names, and push the tasks there")
    export.add_argument("--presign", type=int, metavar="SECONDS",
                        help="turn s3:// URIs into presigned HTTPS URLs valid SECONDS")
    export.add_argument("--pseudo-labels", action="store_true",
                        help="instead: the pool's rows the model is surest of, with their "
                             "predicted class (csv or jsonl), for semi-supervised training")
    export.add_argument("--min-confidence", type=float, default=0.99,
                        help="--pseudo-labels: the least top probability (default 0.99)")
    export.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)


def _add_import_labels(commands) -> None:
    labels = commands.add_parser("import-labels", help="record annotators' labels in a ledger")
    labels.add_argument("source", metavar="FILE|URL",
                        help="a Label Studio JSON export, a Ground Truth output manifest or a "
                             "CSV (any fsspec URL), or a Label Studio project URL to pull from")
    labels.add_argument("--format", required=True, choices=["label-studio", "sagemaker", "csv"])
    labels.add_argument("--ledger", required=True, metavar="URI",
                        help="the ledger the batch was exported with")
    labels.add_argument("--classes", metavar="A,B,...",
                        help="the class names a label may take (checked)")
    labels.add_argument("--job", metavar="OUT|SPEC",
                        help="check labels against this job's model.classes (a spec also gives "
                             "its storage options, for a ledger on s3://)")
    labels.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)


def _spec(args: argparse.Namespace):
    from alray.config import JobSpec, parse_set_option

    overrides = dict(parse_set_option(text) for text in args.overrides)
    return JobSpec.from_yaml(args.spec, overrides=overrides, out=args.out)


def _plan(args: argparse.Namespace) -> int:
    from alray.job.plan import format_plan, plan_job

    plan = plan_job(_spec(args), fresh=args.fresh)
    text, would_fail = format_plan(plan)
    print(text)
    return EXIT_FAILED if would_fail else EXIT_OK


def _summary(result) -> str:
    counts, this_run = result.counts, result.job["runs"][-1]
    rate = (f" at {this_run['rows_per_second']:,.0f} rows/s" if this_run["rows_per_second"]
            else "")
    return (f"alray: {result.job['name']}: {counts['rows_scored']:,} of {counts['rows_in']:,} "
            f"rows scored in {counts['shards']} shards; this run scored "
            f"{this_run['rows_scored']:,} rows in {this_run['shards_scored']} shards{rate} and "
            f"reused {this_run['shards_reused']} committed shards "
            f"({this_run['rows_reused']:,} rows); quarantined {counts['rows_quarantined']:,} "
            f"rows, {counts['shards_quarantined']} shards; selected "
            f"{result.selection.num_rows} -> {result.paths['selection']}")


def _run(args: argparse.Namespace) -> int:
    if args.dry_run:
        return _plan(args)
    from alray.runtime.driver import run

    ledger = args.ledger
    if ledger is not None and "://" not in ledger:
        ledger = os.path.abspath(ledger)
    result = run(_spec(args), address=args.address, fresh=args.fresh, progress=not args.quiet,
                 ledger=ledger)
    print(_summary(result))
    return EXIT_OK


def _output(out: str) -> tuple[str, dict | None]:
    """``(output URI, fsspec options)`` of ``OUT|SPEC``: a job's output folder, or its spec."""
    from alray.config import JobSpec

    if out.endswith((".yaml", ".yml")) and os.path.isfile(out):
        spec = JobSpec.from_yaml(out)
        return spec.output.uri, spec.fsspec_storage
    return out, None


def _local(uri: str | None) -> str | None:
    return uri if uri is None or "://" in uri else os.path.abspath(uri)


def _status(args: argparse.Namespace) -> int:
    from alray.status import format_status, job_status

    output_uri, storage = _output(args.out)
    print(format_status(job_status(output_uri, storage), output_uri))
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from alray.annotation import export
    from alray.errors import ConfigError

    renames = {}
    for text in args.data_fields:
        name, sep, column = text.partition("=")
        if not (sep and name and column):
            raise ConfigError("--data-field", f"got {text!r}; give NAME=COLUMN")
        renames[name] = column
    out, storage = _output(args.out)
    result = export(out, args.format, to=_local(args.to), ledger=_local(args.ledger),
                    round=args.round, data_fields=renames, uri_column=args.uri_column,
                    presign=args.presign,
                    create_project=args.create_project, pseudo_labels=args.pseudo_labels,
                    min_confidence=args.min_confidence, storage=storage)
    noun = "tasks" if args.format == "label-studio" else "records"
    what = "pseudo-labels" if args.pseudo_labels else f"{args.format} {noun}"
    print(f"alray: exported {result.rows:,} {what} -> {result.path}")
    if result.project:
        print(f"alray: pushed to {result.project}")
    if result.ledger:
        print(f"alray: recorded as sent (round {result.round}) in {args.ledger}")
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from alray.report import report

    result = report(*_output(args.out))
    print(f"alray: report -> {result.html} ({len(result.plots)} plots)")
    return EXIT_OK


def _submit(args: argparse.Namespace) -> int:
    from alray.config import parse_set_option
    from alray.submit import submit

    overrides = dict(parse_set_option(text) for text in args.overrides)
    result = submit(args.spec, args.address, overrides=overrides, out=args.out,
                    fresh=args.fresh, wait=args.wait, pip=args.pip,
                    shared_paths=args.shared_paths, timeout=args.timeout, echo=sys.stdout)
    if not args.wait:
        return EXIT_OK
    if result.succeeded:
        print(f"alray: {result.submission_id} SUCCEEDED")
        return EXIT_OK
    print(f"alray: error: {result.submission_id} {result.status}: {result.error}",
          file=sys.stderr)
    return EXIT_FAILED


def _import_labels(args: argparse.Namespace) -> int:
    from alray.annotation import import_labels
    from alray.annotation.labels import job_classes

    classes = args.classes.split(",") if args.classes else None
    storage = None
    if args.job:
        out, storage = _output(args.job)
        classes = classes or job_classes(out, storage)
    result = import_labels(_local(args.source), args.format, _local(args.ledger), classes=classes,
                           storage=storage)
    print(f"alray: {result.answers:,} answers: {result.labeled:,} labeled, {result.skipped:,} "
          f"skipped, {result.unchanged:,} already recorded, {result.unanswered:,} tasks "
          f"unanswered (still sent) -> {result.ledger or 'nothing new to record'}")
    return EXIT_OK


def _cartography(args: argparse.Namespace) -> int:
    from alray.cartography import LogColumns, cartography

    columns = LogColumns(args.id_column, args.label_column, args.logits_column,
                         args.probs_column)
    say = None if args.quiet else (lambda line: print(f"alray: {line}", file=sys.stderr))
    result = cartography(_local(args.dynamics), _local(args.out), hard=args.hard,
                         ambiguous=args.ambiguous, k=args.k, columns=columns,
                         carry=tuple(args.carry),
                         classes=tuple(args.classes.split(",")) if args.classes else None,
                         progress=say)
    c = result.counts
    print(f"alray: {c['rows']:,} rows over {c['epochs']} epochs: {c['hard_to_learn']:,} hard to "
          f"learn, {c['ambiguous']:,} ambiguous, {c['easy_to_learn']:,} easy to learn")
    print(f"alray: statistics -> {result.paths['statistics']}; data map -> "
          f"{result.paths['data_map']}; {c['selected']:,} rows to relabel -> "
          f"{result.paths['selection']}")
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from alray.demo import run_demo

    run_demo(args.out)
    return EXIT_OK


def _simulate(args: argparse.Namespace) -> int:
    from alray.simulation.loop import simulate

    result = simulate(args.spec, out=args.out, progress=not args.quiet)
    print(result.table)
    print(f"\nalray: curves -> {result.paths['curves']}; summary -> {result.paths['summary']}; "
          f"plot -> {result.paths['plot']}")
    return EXIT_OK


def _exit_status(exc: BaseException) -> int:
    from alray.errors import ConfigError, ModelError

    return EXIT_USAGE if isinstance(exc, (ConfigError, ModelError)) else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {"run": _run, "plan": _plan, "demo": _demo, "status": _status,
                "simulate": _simulate, "export": _export, "import-labels": _import_labels,
                "report": _report, "submit": _submit, "cartography": _cartography}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt as exc:
        detail = str(exc) or "interrupted before any work was recorded; nothing to resume"
        print(f"\nalray: {detail}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        from alray.errors import AlrayError

        if args.debug or not isinstance(exc, AlrayError):
            traceback.print_exc()
        message = str(exc).replace("\n", " ")
        print(f"alray: error: {message}", file=sys.stderr)
        return _exit_status(exc) if isinstance(exc, AlrayError) else EXIT_FAILED
