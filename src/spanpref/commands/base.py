"""What a command is, and the one parser that turns a command line (plus an optional YAML file) into the library's
own config dataclasses.

Parsing is transformers' `HfArgumentParser` over the dataclasses the library already declares (each field's help in
`metadata={"help": ...}`), so an option is declared once, where the library uses it. On top of it:

- `metadata={"positional": True}` makes a field a positional argument; `metadata={"cli": False}` keeps a field off
  the command line (a value with no sensible flag form, e.g. a dict).
- `Overrides(Config, fields)` adds options that change a config loaded from somewhere else (a rewriter's or a
  judge's config.yaml): the command receives only the ones the user gave.
- `--config FILE.yaml` sets defaults before the command line is parsed, so any flag given wins, abbreviated or not;
  its keys may also set positional arguments; unknown keys are errors.
- Both `--a-b` and `--a_b` are accepted (as `HfArgumentParser` does).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from transformers.hf_argparser import HfArgumentParser, string_to_bool

from spanpref.configfile import load_mapping
from spanpref.errors import UsageError

_MISSING = "<required>"  # the default of a positional argument nobody gave yet; shown as such in --help


class Command(Protocol):
    """A subcommand: where it sits (`("eval", "elo")`), its one-line help, the configs it parses, and `run`, which
    receives one object per config (a dataclass instance, or a dict for `Overrides`) and returns an exit code or
    None."""

    path: tuple[str, ...]
    help: str
    configs: tuple[Any, ...]
    defaults: Mapping[str, Any]
    passthrough: bool

    def run(self, *configs: Any) -> int | None: ...


@dataclass(frozen=True)
class Overrides:
    """Options that override fields of `config` loaded elsewhere; only the ones given reach the command."""

    config: type
    fields: tuple[str, ...]
    source: str  # where the values come from otherwise, for --help: "the rewriter's config.yaml"


@dataclass(frozen=True)
class FunctionCommand:
    path: tuple[str, ...]
    help: str
    configs: tuple[Any, ...]
    func: Callable[..., int | None]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    passthrough: bool = False  # the command parses its own arguments (TRL recipes): `run` receives the argv list

    def run(self, *configs: Any) -> int | None:
        return self.func(*configs)


def command(path: str, help: str, *configs: Any, defaults: Mapping[str, Any] | None = None, passthrough: bool = False):
    """Decorator: `@command("eval elo", "...", EloOptions)` turns `def run(options)` into a `Command`."""

    def wrap(func: Callable[..., int | None]) -> FunctionCommand:
        return FunctionCommand(tuple(path.split()), help, configs, func, dict(defaults or {}), passthrough)

    return wrap


def _base_type(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def _long_options(name: str) -> list[str]:
    return [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])


def _cli_fields(dtype: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(dtype) if f.init and f.metadata.get("cli", True)]


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where the help text does not already say what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, _MISSING, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


class CommandParser(HfArgumentParser):
    """`HfArgumentParser` with positional fields, fields kept off the command line, and `Overrides`."""

    def __init__(self, dataclass_types: Any = None, **kwargs: Any):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(dataclass_types, **kwargs)

    def _add_dataclass_arguments(self, dtype: Any) -> None:
        if isinstance(dtype, Overrides):
            self._add_overrides(dtype)
            return
        hints = typing.get_type_hints(dtype)
        for f in _cli_fields(dtype):
            f = copy.copy(f)
            f.type = hints[f.name]
            help_text = f.metadata.get("help", "")
            if f.metadata.get("positional"):
                default = f.default
                if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
                    default = f.default_factory()
                default = _MISSING if default is dataclasses.MISSING else default
                self.add_argument(f.name, type=_base_type(f.type), nargs="?", default=default, help=help_text)
                continue
            f.metadata = types.MappingProxyType({"help": help_text})
            self._parse_dataclass_field(self, f)

    def _add_overrides(self, overrides: Overrides) -> None:
        hints = typing.get_type_hints(overrides.config)
        fields = {f.name: f for f in dataclasses.fields(overrides.config)}
        for name in overrides.fields:
            tp = _base_type(hints[name])
            help_text = f"{fields[name].metadata.get('help', '')} (default: {overrides.source})"
            kwargs: dict[str, Any] = {"type": tp, "default": argparse.SUPPRESS, "help": help_text}
            if tp is bool:
                kwargs.update(type=string_to_bool, nargs="?", const=True)
            elif typing.get_origin(tp) is list:
                kwargs.update(type=typing.get_args(tp)[0], nargs="+")
            self.add_argument(*_long_options(name), **kwargs)


def _dests(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions if a.dest not in ("help", "config")}


def apply_yaml_defaults(parser: argparse.ArgumentParser, path: str | Path) -> None:
    """The file's values become the parser's defaults (so flags given on the command line win); a field the
    file sets is no longer required."""
    data = load_mapping(path, _dests(parser), what="options of this command")
    parser.set_defaults(**data)
    for action in parser._actions:
        if action.dest in data:
            action.required = False


def build_configs(cmd: Command, ns: argparse.Namespace) -> list[Any]:
    """One object per config of the command from the parsed namespace; a positional nobody gave is an error."""
    missing = [k for k, v in vars(ns).items() if v == _MISSING]
    if missing:
        raise UsageError(
            f"{' and '.join(m.upper() for m in missing)} is required (give it on the command line or "
            "in the --config file)"
        )
    out = []
    for config in cmd.configs:
        if isinstance(config, Overrides):
            out.append({name: getattr(ns, name) for name in config.fields if hasattr(ns, name)})
            continue
        try:
            out.append(config(**{f.name: getattr(ns, f.name) for f in _cli_fields(config)}))
        except ValueError as e:  # a config's own check of its values (__post_init__)
            raise UsageError(f"{e}") from e
    return out


def option(help: str, *, positional: bool = False, default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    """A field of a command's own options (those that belong to no library config), with its --help text."""
    metadata = {"help": help, "positional": positional}
    if "default_factory" in kw:
        return field(default_factory=kw["default_factory"], metadata=metadata)
    return field(default=default, metadata=metadata)
