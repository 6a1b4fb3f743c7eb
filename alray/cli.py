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
    return parser


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


def _status(args: argparse.Namespace) -> int:
    from alray.config import JobSpec
    from alray.status import format_status, job_status

    if args.out.endswith((".yaml", ".yml")) and os.path.isfile(args.out):
        spec = JobSpec.from_yaml(args.out)
        output_uri, storage = spec.output.uri, spec.fsspec_storage
    else:
        output_uri, storage = args.out, None
    print(format_status(job_status(output_uri, storage), output_uri))
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
                "simulate": _simulate}
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
