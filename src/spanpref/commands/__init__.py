"""The `spanpref` command line: an explicit list of commands, each parsing the library's config dataclasses and
calling one library function. Library code never imports this package."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from spanpref.commands.base import Command, CommandParser, apply_yaml_defaults

_CONFIG_HELP = "YAML file whose keys set this command's options (flags given on the command line win)"


def get_commands() -> list[Command]:
    import spanpref.commands.reproduce as reproduce
    from spanpref.commands import chains, data, demo, eval, feedback, generate, pairs, rewards, space, train, ui

    return [
        *data.COMMANDS,
        *generate.COMMANDS,
        *chains.COMMANDS,
        *pairs.COMMANDS,
        *train.COMMANDS,
        *eval.COMMANDS,
        *feedback.COMMANDS,
        *rewards.COMMANDS,
        *ui.COMMANDS,
        *space.COMMANDS,
        *demo.COMMANDS,
        *reproduce.COMMANDS,
    ]


def build_parser(commands: Sequence[Command] | None = None) -> tuple[argparse.ArgumentParser, dict]:
    """The parser tree, and the subparser of every command by its path."""
    from spanpref import __version__

    parser = argparse.ArgumentParser(
        prog="spanpref", description="Span-level feedback -> improvement chains -> preference pairs -> tuned models."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages and show tracebacks")
    parser.add_argument("--version", action="version", version=f"spanpref {__version__}")
    groups: dict[tuple[str, ...], argparse._SubParsersAction] = {
        (): parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=CommandParser)
    }
    subparsers = {}
    for cmd in commands or get_commands():
        for depth in range(1, len(cmd.path)):
            prefix = cmd.path[:depth]
            if prefix not in groups:
                group = groups[prefix[:-1]].add_parser(prefix[-1], help=f"{' '.join(prefix)} commands")
                groups[prefix] = group.add_subparsers(
                    dest=f"command_{depth}", required=True, metavar="COMMAND", parser_class=CommandParser
                )
        sub = groups[cmd.path[:-1]]
        if cmd.passthrough:
            p = sub.add_parser(cmd.path[-1], help=cmd.help, description=cmd.help, add_help=False)
            p.add_argument("argv", nargs=argparse.REMAINDER)
        else:
            p = sub.add_parser(cmd.path[-1], help=cmd.help, description=cmd.help, dataclass_types=list(cmd.configs))
            p.add_argument("--config", help=_CONFIG_HELP)
            p.set_defaults(**cmd.defaults)
        p.set_defaults(_command=cmd)
        subparsers[cmd.path] = p
    return parser, subparsers


def find_command(argv: Sequence[str], subparsers: dict) -> tuple[str, ...] | None:
    """The path of the command an argument list names (the longest match of its leading words)."""
    words = [a for a in argv if not a.startswith("-")]
    matches = [path for path in subparsers if tuple(words[: len(path)]) == path]
    return max(matches, key=len) if matches else None


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse a command line; a `--config FILE` of the chosen command is applied as defaults first."""
    parser, subparsers = build_parser()
    path = find_command(argv, subparsers)
    if path is not None and subparsers[path]._defaults["_command"].passthrough:
        # everything after the command's words is its own (argparse would take a leading --help for itself)
        words = [i for i, a in enumerate(argv) if not a.startswith("-")]
        return argparse.Namespace(
            _command=subparsers[path]._defaults["_command"], argv=list(argv)[words[len(path) - 1] + 1 :]
        )
    if path is not None:
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--config")
        known, _ = pre.parse_known_args(list(argv))
        if known.config:
            apply_yaml_defaults(subparsers[path], known.config)
    return parser.parse_args(list(argv))
