"""``choreo-dp completion bash|zsh``: a shell completion script generated from the argument parser.

The script is data (every command path with its sub-commands, options, which options take a value,
and the choices of options and positionals) plus one small bash function that walks the words typed
so far. It is generated from the very parser that parses the command line, plugin verbs included,
so it never drifts from the CLI; zsh runs the same function through ``bashcompinit``.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass, field
from typing import Any

from choreo_dp.cli.common import add_verb

FUNCTION = "_choreo_dp"
PROGRAM = "choreo-dp"


@dataclass
class Command:
    subcommands: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)
    value_options: dict[str, list[str]] = field(default_factory=dict)  # option -> its choices (may be empty)
    positionals: list[list[str]] = field(default_factory=list)  # choices of each positional, in order


def _choices(action: argparse.Action) -> list[str]:
    return [str(c) for c in action.choices] if action.choices else []


def walk(parser: argparse.ArgumentParser, path: str = "") -> dict[str, Command]:
    """Every command path (``""``, ``"cp"``, ``"cp get"``, ...) with what may follow it."""
    found: dict[str, Command] = {}
    here = Command()
    found[path] = here
    for action in parser._actions:  # argparse exposes its actions only here
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                here.subcommands.append(name)
                found.update(walk(child, f"{path} {name}".strip()))
        elif action.option_strings:
            here.options.extend(action.option_strings)
            # nargs "?" (``--wait[=T]``) takes its value only after "=", never as the next word
            if action.nargs not in (0, "?"):
                for option in action.option_strings:
                    here.value_options[option] = _choices(action)
        elif action.nargs != argparse.REMAINDER:
            here.positionals.append(_choices(action))
    return found


def _quoted(word: str) -> str:
    return shlex.quote(word) if word else '""'


def _case(entries: dict[str, str]) -> str:
    arms = "".join(f"        {_quoted(key)}) echo {_quoted(value)} ;;\n" for key, value in entries.items())
    return f'    case "$1" in\n{arms}    esac\n'


def bash_script(parser: argparse.ArgumentParser) -> str:
    commands = walk(parser)
    # what an empty word completes to: the sub-commands, or the options of a command that has none
    words = {path: " ".join(c.subcommands or c.options) for path, c in commands.items()}
    options = {path: " ".join(c.options) for path, c in commands.items()}
    is_command = " | ".join(_quoted(path) for path in commands)
    takes_value: dict[str, str] = {}
    positional: dict[str, str] = {}
    for path, c in commands.items():
        for option, choices in c.value_options.items():
            takes_value[f"{path}|{option}"] = " ".join(choices) or " "
        for i, choices in enumerate(c.positionals):
            if choices:
                positional[f"{path}|{i}"] = " ".join(choices)
    return f"""# {PROGRAM} completion, generated from its argument parser by `{PROGRAM} completion bash`.
# Load it with:  source <({PROGRAM} completion bash)

{FUNCTION}_words() {{
{_case(words)}}}

{FUNCTION}_options() {{
{_case(options)}}}

# prints the option's choices (a blank when it takes a free value); nothing when it takes no value
{FUNCTION}_value() {{
{_case(takes_value)}}}

{FUNCTION}_positional() {{
{_case(positional)}}}

{FUNCTION}_is_command() {{
    case "$1" in
        {is_command}) return 0 ;;
    esac
    return 1
}}

{FUNCTION}() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" path="" pending="" word next i pos=0
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        if [[ -n $pending ]]; then
            pending=""
            continue
        fi
        if [[ $word == -* ]]; then
            if [[ $word != *=* && -n "$({FUNCTION}_value "$path|$word")" ]]; then
                pending=$word
            fi
            continue
        fi
        next="${{path:+$path }}$word"
        if {FUNCTION}_is_command "$next"; then
            path=$next
            pos=0
        else
            pos=$((pos + 1))
        fi
    done
    COMPREPLY=()
    if [[ -n $pending ]]; then
        local choices
        choices="$({FUNCTION}_value "$path|$pending")"
        # a free value (a file, a URL): leave it to the shell's default completion
        [[ -n ${{choices// /}} ]] && COMPREPLY=($(compgen -W "$choices" -- "$cur"))
        return 0
    fi
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$({FUNCTION}_options "$path")" -- "$cur"))
        return 0
    fi
    local candidates
    candidates="$({FUNCTION}_positional "$path|$pos")"
    if [[ -z $candidates ]]; then
        candidates="$({FUNCTION}_words "$path")"
        # after a positional only options remain, and they wait for `-<TAB>`
        [[ $pos -gt 0 ]] && candidates=""
    fi
    [[ -n $candidates ]] && COMPREPLY=($(compgen -W "$candidates" -- "$cur"))
    return 0
}}

complete -o default -F {FUNCTION} {PROGRAM}
"""


def zsh_script(parser: argparse.ArgumentParser) -> str:
    # zsh's bashcompinit runs bash completion functions unchanged, so both shells share one walker
    return (
        f"# {PROGRAM} completion for zsh, generated from its argument parser by `{PROGRAM} completion zsh`.\n"
        f"# Load it with:  source <({PROGRAM} completion zsh)\n\n"
        "autoload -U +X compinit && compinit\n"
        "autoload -U +X bashcompinit && bashcompinit\n\n" + bash_script(parser)
    )


def register(sub: Any) -> None:
    p = add_verb(
        sub,
        "completion",
        "print a shell completion script (bash or zsh)",
        "source <(choreo-dp completion bash)         # this bash session",
        "choreo-dp completion bash > /etc/bash_completion.d/choreo-dp",
        "source <(choreo-dp completion zsh)          # this zsh session (or add the line to ~/.zshrc)",
    )
    p.add_argument("shell", choices=["bash", "zsh"], help="the shell to complete in")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from choreo_dp.cli.main import build_parser

    parser = build_parser()
    print(bash_script(parser) if args.shell == "bash" else zsh_script(parser), end="")
    return 0
