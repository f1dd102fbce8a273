"""Entry point: builds the parser from one module per verb and dispatches."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from choreo_dp import __version__
from choreo_dp.cli import (
    agent_cmd,
    controlplane_cmd,
    cp_cmd,
    crds_cmd,
    operator_cmd,
    run_cmd,
    sandbox_cmd,
)
from choreo_dp.cli.common import EXIT_USAGE, OneLineParser, UsageError

VERB_MODULES = (operator_cmd, agent_cmd, run_cmd, controlplane_cmd, cp_cmd, sandbox_cmd, crds_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="choreo-dp", description="Private data plane: operator, tunnel agent, tools.")
    parser.add_argument("--version", action="version", version=f"choreo-dp {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=OneLineParser)
    sub.required = True
    for module in VERB_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        code: int = args.handler(args)
    except UsageError as exc:
        sys.stderr.write(f"choreo-dp: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
