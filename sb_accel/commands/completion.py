"""``sb-accel completion bash|zsh``: a shell completion script generated from the parser itself, so
it never lags behind the flags: commands, each command's flags, the words a flag takes (a strategy,
a model, ...) and file names for the flags that take a path or a free value."""
from __future__ import annotations

import argparse
import shlex
from typing import Dict, List, Tuple

from ..config import choices
from . import EXIT_OK

__all__ = ["cmd_completion", "completion_script"]


def _flag_values(action: argparse.Action) -> Tuple[str, ...]:
    """The words ``action``'s value may be (empty: any value, completed as a file name)."""
    if action.choices:
        return tuple(map(str, action.choices))
    return choices(action.dest)


def _commands(parser: argparse.ArgumentParser) -> Dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _case_arms(commands: Dict[str, argparse.ArgumentParser]) -> Tuple[List[str], List[str]]:
    """Bash ``case`` arms: each command's flags and positional words, and the values of ``command --flag``."""
    flags, values = [], []
    for name, command in commands.items():
        words: List[str] = []
        positional: List[str] = []  # the words a positional argument may be (``completion bash``)
        for action in command._actions:
            if not action.option_strings:
                positional += _flag_values(action)
            words += [o for o in action.option_strings if o.startswith("--")]
            if action.option_strings and action.nargs != 0:
                pattern = "|".join(shlex.quote(f"{name} {o}") for o in action.option_strings)
                choices = " ".join(_flag_values(action))
                values.append(f"        {pattern}) words={shlex.quote(choices)} ;;")
        words_, args_ = shlex.quote(" ".join(words)), shlex.quote(" ".join(positional))
        flags.append(f"        {name}) words={words_} args={args_} ;;")
    return flags, values


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of ``parser`` (``sb-accel``) for ``bash`` or ``zsh`` (through bashcompinit)."""
    commands = _commands(parser)
    flags, values = _case_arms(commands)
    top = " ".join([*commands, "--help", "--version"])
    script = f"""# sb-accel completion ({shell}): eval "$(sb-accel completion {shell})"
_sb_accel() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}} words args
    if [[ $COMP_CWORD -eq 1 ]]; then
        COMPREPLY=($(compgen -W {shlex.quote(top)} -- "$cur"))
        return
    fi
    case "${{COMP_WORDS[1]}} $prev" in
{chr(10).join(values)}
        *) words=unset ;;
    esac
    if [[ $words != unset ]]; then  # a flag's value: its words, else file names
        COMPREPLY=($(compgen -W "$words" -- "$cur"))
        return
    fi
    case "${{COMP_WORDS[1]}}" in
{chr(10).join(flags)}
        *) words= args= ;;
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$words" -- "$cur"))
    elif [[ -n $args ]]; then
        COMPREPLY=($(compgen -W "$args" -- "$cur"))
    fi
}}
complete -o default -F _sb_accel sb-accel
"""
    if shell == "zsh":
        script = "autoload -U +X bashcompinit && bashcompinit\n" + script
    return script


def cmd_completion(args: argparse.Namespace) -> int:
    from .parser import build_parser

    print(completion_script(build_parser(), args.shell), end="")
    return EXIT_OK
