"""Helpers shared by every verb: env-var defaults, one-line errors, exit codes."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

EXIT_USAGE = 2
Handler = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """Bad flags or configuration: reported as one line on stderr, exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse prints the whole usage on error; the contract wants one clear line.

    Descriptions and examples keep their line breaks (an example is a command to paste)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def add_verb(sub: Any, name: str, summary: str, *examples: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A sub-command with its one-line summary (listed in the parent's --help), the same line as its
    own description, and examples as the epilog of its --help."""
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples) if examples else None
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=summary, description=summary[:1].upper() + summary[1:] + ".", epilog=epilog, **kwargs
    )
    return parser


def env_name(flag: str) -> str:
    return "CHOREO_DP_" + flag.lstrip("-").replace("-", "_").upper()


def add_env_argument(parser: argparse.ArgumentParser, flag: str, **kwargs: Any) -> None:
    """An option whose default also comes from ``CHOREO_DP_<FLAG>``."""
    env = env_name(flag)
    if env in os.environ:
        raw = os.environ[env]
        convert = kwargs.get("type")
        try:
            kwargs["default"] = convert(raw) if callable(convert) else raw
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            raise UsageError(f"{env}={raw!r}: {exc}") from None
        # argparse checks choices only on the command line, never on a default
        if "choices" in kwargs and kwargs["default"] not in kwargs["choices"]:
            raise UsageError(f"{env}={raw!r}: choose from {', '.join(map(str, kwargs['choices']))}")
        kwargs["required"] = False
    help_text = kwargs.get("help", "")
    kwargs["help"] = f"{help_text} (env {env})".strip()
    parser.add_argument(flag, **kwargs)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def log_level(text: str) -> str:
    """A level name, any case; refused here so a typo is a usage error, not a crash at start-up."""
    if text.upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"invalid level {text!r} (choose from {', '.join(LOG_LEVELS)})")
    return text.upper()


def add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    add_env_argument(parser, "--log-format", choices=["text", "json"], default="text", help="log line format")
    add_env_argument(
        parser,
        "--log-level",
        type=log_level,
        default="INFO",
        metavar="LEVEL",
        help=f"log level ({', '.join(LOG_LEVELS)})",
    )


def not_implemented(verb: str) -> Handler:
    def handler(_: argparse.Namespace) -> int:
        sys.stderr.write(f"choreo-dp {verb}: not implemented yet\n")
        return EXIT_USAGE

    return handler


def port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {value}")
    return value


def existing_file(text: str) -> str:
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return text


def namespace_patterns(text: str) -> tuple[str, ...]:
    """``--protected-namespaces`` of the operator and the agent: comma-separated globs."""
    from choreo_dp.render.environment import parse_protected_namespaces

    try:
        return parse_protected_namespaces(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


PROTECTED_NAMESPACES_HELP = (
    "comma-separated globs of namespaces no Environment may use (default: kube-*,default; "
    "the operator's own namespace and namespaces labelled choreo.dev/protected always are)"
)
