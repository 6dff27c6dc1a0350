"""A static bash completion script generated from the argparse tree (argparse has none built in).

The script holds, for every command path ("bolt", "bolt remote", "bolt remote add", ...), its subcommands and its
options, plus the options that take a value.  The completion function walks the words typed so far
to find the path, then offers subcommands, or options when the word starts with "-".  Nothing is
asked of the server while completing.
"""

from __future__ import annotations

import argparse
import shlex
from typing import Iterator


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
         ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """(path, parser) for the parser and every subcommand below it, aliases included."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, path + (name,))


def subcommands(parser: argparse.ArgumentParser) -> list[str]:
    names: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            names += list(action.choices)
    return names


def options(parser: argparse.ArgumentParser) -> tuple[list[str], list[str]]:
    """(every option string, those that take a value)."""
    every, valued = [], []
    for action in parser._actions:
        for option in action.option_strings:
            every.append(option)
            if action.nargs != 0:
                valued.append(option)
    return every, valued


def bash(parser: argparse.ArgumentParser) -> str:
    prog = parser.prog
    children, opts, valued = [], [], set()
    for path, sub in walk(parser):
        key = shlex.quote(" ".join((prog,) + path))  # bash refuses an empty key
        children.append(f"        [{key}]={shlex.quote(' '.join(subcommands(sub)))}")
        every, takes_value = options(sub)
        opts.append(f"        [{key}]={shlex.quote(' '.join(every))}")
        valued.update(takes_value)
    function = "_" + "".join(c if c.isalnum() else "_" for c in prog) + "_complete"
    return f"""# bash completion for {prog}, generated from its argparse tree by `{prog} completion bash`.
# Use:  eval "$({prog} completion bash)"   or save it as /etc/bash_completion.d/{prog}
{function}() {{
    local -A children=(
{chr(10).join(children)}
    )
    local -A options=(
{chr(10).join(opts)}
    )
    local valued={shlex.quote(' ' + ' '.join(sorted(valued)) + ' ')}
    local cur=${{COMP_WORDS[COMP_CWORD]}} path={shlex.quote(prog)} word i skip=0
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${{COMP_WORDS[i]}}
        if ((skip)); then skip=0; continue; fi
        if [[ $word == -- ]]; then COMPREPLY=(); return 0; fi
        if [[ $word == -* ]]; then
            [[ $word != *=* && $valued == *" $word "* ]] && skip=1
            continue
        fi
        if [[ " ${{children[$path]}} " == *" $word "* ]]; then
            path="$path $word"
        fi
    done
    if ((skip)); then COMPREPLY=(); return 0; fi
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "${{options[$path]}}" -- "$cur"))
    else
        COMPREPLY=($(compgen -W "${{children[$path]}}" -- "$cur"))
    fi
    return 0
}}
complete -o default -F {function} {prog}
"""
