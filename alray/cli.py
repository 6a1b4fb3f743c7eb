"""The ``alray`` command line.

Exit status: 0 the job finished; 1 the job failed; 2 usage or configuration error. Errors are one
line on stderr (``alray: error: <where>: <what>; <what to do>``); ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alray", description="Select the rows of a huge "
                                     "unlabeled pool that are worth labeling, on Ray.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="the main job on a local Ray, on scikit-learn digits")
    demo.add_argument("--out", default="alray-demo", help="output folder (overwritten)")
    demo.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)

    run = commands.add_parser("run", help="run a job spec")
    run.add_argument("spec", metavar="JOB.yaml")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="set one dotted spec key, e.g. scoring.strategy=margin")
    run.add_argument("--out", help="output URI (overrides output.uri)")
    run.add_argument("--address", help="Ray address to join ('auto' joins a running cluster)")
    run.add_argument("--fresh", action="store_true", help="ignore earlier outputs and start over")
    run.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)

    status = commands.add_parser("status", help="progress of a running or stopped job")
    status.add_argument("out", metavar="OUT|SPEC",
                        help="the job's output folder, or its spec (.yaml: its output.uri, with "
                             "its storage options)")
    status.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    return parser


def _run(args: argparse.Namespace) -> int:
    from alray.config import JobSpec, parse_set_option
    from alray.runtime.driver import run

    overrides = dict(parse_set_option(text) for text in args.overrides)
    spec = JobSpec.from_yaml(args.spec, overrides=overrides, out=args.out)
    result = run(spec, address=args.address, fresh=args.fresh)
    counts = result.counts
    print(f"alray: {spec.name}: scored {counts['rows_scored']:,} of {counts['rows_in']:,} rows "
          f"in {counts['shards']} shards ({result.rows_per_second:,.0f} rows/s); "
          f"quarantined {counts['rows_quarantined']:,} rows, "
          f"{counts['shards_quarantined']} shards; reused {result.job['shards_reused']} "
          "committed shards; "
          f"selected {result.selection.num_rows} -> {result.paths['selection']}")
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


def _exit_status(exc: BaseException) -> int:
    from alray.errors import ConfigError, ModelError

    return EXIT_USAGE if isinstance(exc, (ConfigError, ModelError)) else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {"run": _run, "demo": _demo, "status": _status}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("alray: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from alray.errors import AlrayError

        if args.debug or not isinstance(exc, AlrayError):
            traceback.print_exc()
        message = str(exc).replace("\n", " ")
        print(f"alray: error: {message}", file=sys.stderr)
        return _exit_status(exc) if isinstance(exc, AlrayError) else EXIT_FAILED
