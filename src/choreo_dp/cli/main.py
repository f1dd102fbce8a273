"""Entry point: builds the parser from one module per verb and dispatches.

The data plane's own verbs are imported here; the verbs of the other products (the reference control
plane, the sandbox) are found through the ``choreo_dp.verbs`` entry points, so the data plane never
imports them and an image holding only the data plane still knows their names: such a verb, or one
whose extra's dependencies are not installed, fails with one line naming the extra to install.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, distribution, entry_points
from typing import Any

from choreo_dp import __version__
from choreo_dp.cli import agent_cmd, completion_cmd, crds_cmd, operator_cmd, run_cmd
from choreo_dp.cli.common import EXIT_USAGE, OneLineParser, UsageError

VERB_MODULES = (operator_cmd, agent_cmd, run_cmd, crds_cmd, completion_cmd)
DISTRIBUTION = "choreo-dp"
ENTRY_POINT_GROUP = "choreo_dp.verbs"

# verb -> the extra that installs it; also the verbs that must exist even when their package is absent.
PLUGIN_EXTRAS = {"control-plane": "controlplane", "cp": "controlplane", "sandbox": "sandbox"}
# the order of `choreo-dp --help`, as before the split.
_ORDER = ("operator", "agent", "run", "control-plane", "cp", "sandbox", "crds", "completion")
# set to 1 to see the traceback of an unexpected error instead of its one-line summary
DEBUG_ENV = "CHOREO_DP_DEBUG"
EXAMPLES = """examples:
  choreo-dp sandbox                                   everything on this machine, until Ctrl-C
  choreo-dp cp apply -f examples/ --dataplane sandbox --wait
  choreo-dp cp get apps
  choreo-dp operator --kubeconfig ~/.kube/config
  source <(choreo-dp completion bash)                 tab completion in this shell

`choreo-dp VERB --help` describes each verb."""


class MissingExtra(Exception):
    def __init__(self, verb: str, missing: str | None) -> None:
        extra = PLUGIN_EXTRAS.get(verb, verb)
        what = f" ({missing!r} is not installed)" if missing else ""
        super().__init__(f"{verb!r} needs the {extra!r} extra{what}: pip install 'choreo-dp[{extra}]'")


def _missing_verb(sub: Any, verb: str, missing: str | None) -> None:
    p = sub.add_parser(verb, help=f"(not installed: needs the {PLUGIN_EXTRAS.get(verb, verb)!r} extra)")
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def handler(_: argparse.Namespace) -> int:
        raise MissingExtra(verb, missing)

    p.set_defaults(handler=handler)


def _requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    return re.sub(r"[-_.]+", "-", match.group(0)).lower() if match else requirement


def missing_requirement(extra: str) -> str | None:
    """The first distribution ``extra`` requires that is not installed (None: all are, or unknown).

    Checked before a plug-in verb runs, so e.g. ``sandbox`` without its extra fails at once with the
    extra's name instead of half-starting and failing in a child process."""
    try:
        requires = distribution(DISTRIBUTION).requires or []
    except PackageNotFoundError:  # run from a source tree that is not installed
        return None
    todo, seen = [extra], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for req in requires:
            spec, _, marker = req.partition(";")
            if not re.search(rf"extra\s*==\s*['\"]{re.escape(current)}['\"]", marker):
                continue
            name = _requirement_name(spec)
            if name == DISTRIBUTION:
                nested = re.search(r"\[([^\]]*)\]", spec)
                todo.extend(e.strip() for e in (nested.group(1) if nested else "").split(",") if e.strip())
                continue
            try:
                distribution(name)
            except PackageNotFoundError:
                return name
    return None


def _plugin_registrars() -> dict[str, Callable[[Any], None] | ModuleNotFoundError]:
    found: dict[str, Callable[[Any], None] | ModuleNotFoundError] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            found[ep.name] = ep.load()
        except ModuleNotFoundError as exc:
            found[ep.name] = exc
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="choreo-dp", description="Private data plane: operator, tunnel agent, tools.", epilog=EXAMPLES
    )
    parser.add_argument("--version", action="version", version=f"choreo-dp {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=OneLineParser)
    sub.required = True
    registrars: dict[str, Callable[[Any], None] | ModuleNotFoundError] = {
        module.register.__module__.rsplit(".", 1)[-1].removesuffix("_cmd"): module.register
        for module in VERB_MODULES
    }
    registrars.update(_plugin_registrars())
    for verb in PLUGIN_EXTRAS:
        registrars.setdefault(verb, ModuleNotFoundError(name=None))
    for verb in sorted(registrars, key=lambda v: (_ORDER.index(v) if v in _ORDER else len(_ORDER), v)):
        register = registrars[verb]
        if isinstance(register, ModuleNotFoundError):
            _missing_verb(sub, verb, register.name)
        else:
            register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        extra = PLUGIN_EXTRAS.get(args.verb)
        if extra is not None and (missing := missing_requirement(extra)) is not None:
            raise MissingExtra(args.verb, missing)
        try:
            code: int = args.handler(args)
        except ModuleNotFoundError as exc:
            # a plug-in verb whose package is installed but not its extra's dependencies
            if args.verb not in PLUGIN_EXTRAS:
                raise
            raise MissingExtra(args.verb, exc.name) from None
    except (UsageError, MissingExtra) as exc:
        sys.stderr.write(f"choreo-dp: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        return _reader_went_away()
    except Exception as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        # a failure nobody anticipated still reads as one line; the traceback is one variable away
        text = " ".join(str(exc).split()) or "(no message)"
        sys.stderr.write(
            f"choreo-dp: error: {type(exc).__name__}: {text} (set {DEBUG_ENV}=1 for the traceback)\n"
        )
        return 1
    return code


def _reader_went_away() -> int:
    """``choreo-dp cp get ... | head``: the reader closed the pipe; that is not an error.

    stdout is pointed at /dev/null so the interpreter's final flush does not fail again and print
    "Exception ignored ... BrokenPipeError" on stderr."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (captured in tests)
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
