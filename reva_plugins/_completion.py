"""Shell completion scripts for ``reva-plugins completion bash|zsh|fish``, made from the parser.

The scripts are static: the commands, their options and the choices of those that take one are
written into the script, so completing never starts Python. Paths complete as the shell does.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, get_args

Shell = Literal["bash", "zsh", "fish"]
SHELLS: tuple[str, ...] = get_args(Shell)


@dataclass(frozen=True)
class Command:
    """One command of the tree: its words (``("env", "list")``), options and subcommands."""

    path: tuple[str, ...]
    help: str
    options: tuple[tuple[str, str, tuple[str, ...]], ...]  # (flag, help, choices)
    positional_choices: tuple[str, ...]
    subcommands: tuple[str, ...]


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = (), text: str = ""
) -> Iterator[Command]:
    """Every command of ``parser``'s tree (``text``: its help), the top level first."""
    options: list[tuple[str, str, tuple[str, ...]]] = []
    positional: tuple[str, ...] = ()
    children: dict[str, tuple[argparse.ArgumentParser, str]] = {}
    for action in parser._actions:  # argparse has no public walk of its tree
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            children = {name: (sub, helps.get(name, "")) for name, sub in action.choices.items()}
        elif action.option_strings:
            if action.help == argparse.SUPPRESS:
                continue
            choices = tuple(str(c) for c in action.choices or ())
            for flag in action.option_strings:
                options.append((flag, _one_line(action.help or ""), choices))
        elif action.choices:
            positional = tuple(str(c) for c in action.choices)
    yield Command(path, _one_line(text), tuple(options), positional, tuple(children))
    for name, (sub, sub_text) in children.items():
        yield from commands(sub, (*path, name), sub_text)


def _one_line(text: str) -> str:
    return " ".join(text.replace("%(default)s", "").split())


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of ``parser``'s program for ``shell``."""
    tree = list(commands(parser))
    prog = parser.prog
    if shell == "fish":
        return _fish(prog, tree)
    script = _bash(prog, tree)
    if shell == "zsh":  # zsh runs bash completions through bashcompinit
        return f"#compdef {prog}\nautoload -Uz bashcompinit && bashcompinit\n{script}"
    return script


def _bash(prog: str, tree: list[Command]) -> str:
    func = "_" + prog.replace("-", "_")
    cases: list[str] = []
    for command in tree:
        words = [flag for flag, _, _ in command.options]
        words += command.subcommands or command.positional_choices
        path, listed = shlex.quote(" ".join(command.path)), shlex.quote(" ".join(words))
        cases.append(f"        {path}) words={listed};;")
    # The path is the command words typed so far (options skipped); the word before the cursor,
    # when it is an option with choices, narrows the completion to its choices.
    return f"""# bash completion for {prog} (source it, or put it in bash-completion's folder)
{func}() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    local path="" word i words
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        [[ "$word" == -* ]] && continue
        case "$path" in
{_bash_known(tree)}
        esac
    done
    words=""
    case "${{path:+$path }}$prev" in
{_indent(_option_cases(tree))}
    esac
    if [[ -z "$words" ]]; then
        case "$path" in
{_indent(cases)}
        esac
    fi
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
    [[ ${{#COMPREPLY[@]}} -eq 0 && "$cur" != -* ]] && COMPREPLY=($(compgen -f -- "$cur"))
    return 0
}}
complete -o filenames -F {func} {prog}
"""


def _bash_known(tree: list[Command]) -> str:
    """``case`` arms that extend the path with a word that is a subcommand of it."""
    arms = []
    for command in tree:
        if command.subcommands:
            names = "|".join(shlex.quote(s) for s in command.subcommands)
            joined = " ".join(command.path)
            new = f"{joined} $word" if joined else "$word"
            arms.append(
                f'            {shlex.quote(joined)}) case "$word" in {names}) path="{new}";; esac;;'
            )
    return "\n".join(arms)


def _option_cases(tree: list[Command]) -> list[str]:
    arms = []
    for command in tree:
        for flag, _, choices in command.options:
            if choices:
                key = " ".join((*command.path, flag))
                arms.append(f"    {shlex.quote(key)}) words={shlex.quote(' '.join(choices))};;")
    return arms


def _indent(lines: list[str]) -> str:
    return "\n".join(f"    {line}" for line in lines)


def _fish(prog: str, tree: list[Command]) -> str:
    lines = [f"# fish completion for {prog} (save as ~/.config/fish/completions/{prog}.fish)"]
    lines.append(f"complete -c {prog} -f")
    for command in tree:
        if command.path:
            parent = command.path[:-1]
            lines.append(
                f"complete -c {prog} -n {shlex.quote(_fish_at(parent, tree))} "
                f"-a {shlex.quote(command.path[-1])} -d {shlex.quote(command.help)}"
            )
        condition = _fish_at(command.path, tree)
        for flag, text, choices in command.options:
            option = f"-l {flag[2:]}" if flag.startswith("--") else f"-s {flag[1:]}"
            argument = f" -x -a {shlex.quote(' '.join(choices))}" if choices else ""
            lines.append(
                f"complete -c {prog} -n {shlex.quote(condition)} {option}{argument} "
                f"-d {shlex.quote(text)}"
            )
        if command.positional_choices:
            lines.append(
                f"complete -c {prog} -n {shlex.quote(condition)} "
                f"-a {shlex.quote(' '.join(command.positional_choices))}"
            )
        elif not command.subcommands and command.path:
            lines.append(f"complete -c {prog} -n {shlex.quote(condition)} -F")
    return "\n".join(lines) + "\n"


def _fish_at(path: tuple[str, ...], tree: list[Command]) -> str:
    """A fish condition true when the words typed so far are exactly ``path``'s commands."""
    if not path:
        top = " ".join(c.path[0] for c in tree if len(c.path) == 1)
        return f"not __fish_seen_subcommand_from {top}"
    parts = [f"__fish_seen_subcommand_from {word}" for word in path]
    siblings = next((c.subcommands for c in tree if c.path == path), ())
    if siblings:
        parts.append(f"not __fish_seen_subcommand_from {' '.join(siblings)}")
    return "; and ".join(parts)
