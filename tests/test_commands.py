"""The command layer: parsing into the library's configs, --config files, errors, isolation, and the docs."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest

from spanpref.cli import main
from spanpref.commands import build_parser, find_command, get_commands, parse
from spanpref.commands.base import build_configs
from spanpref.pairs import PairConfig

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "spanpref"


def configs_of(argv: list[str]) -> list:
    ns = parse(argv)
    return build_configs(ns._command, ns)


def test_an_abbreviated_flag_wins_over_the_config_file(tmp_path):
    cfg = tmp_path / "pairs.yaml"
    cfg.write_text("max_document_chars: 50\nseed: 3\n")
    _, pair_config = configs_of(["pairs", "data", "--config", str(cfg), "--max-doc", "100"])
    assert isinstance(pair_config, PairConfig)
    assert pair_config.max_document_chars == 100  # the flag, abbreviated, beats the file
    assert pair_config.seed == 3  # the file beats the default
    _, pair_config = configs_of(["pairs", "data", "--max-doc", "100", "--config", str(cfg)])
    assert pair_config.max_document_chars == 100  # wherever --config stands


def test_both_spellings_and_positionals_from_the_config_file(tmp_path):
    for flag in ("--max_document_chars", "--max-document-chars"):
        assert configs_of(["pairs", "data", flag, "7"])[1].max_document_chars == 7
    cfg = tmp_path / "chains.yaml"
    cfg.write_text("folder: from-yaml\nslack: 5\ncandidates: 3\n")
    options, backend, validation, rewriter = configs_of(["chains", "--config", str(cfg)])
    assert options.folder == "from-yaml" and validation.slack == 5
    assert rewriter == {"candidates": 3}  # only what was given reaches the rewriter
    options, *_ = configs_of(["chains", "given", "--config", str(cfg)])
    assert options.folder == "given"
    assert configs_of(["chains", "x", "--prefill"])[3] == {"prefill": True}
    assert configs_of(["chains", "x"])[3] == {}


def test_command_defaults_differ_from_the_library_where_the_command_says(tmp_path):
    _, _, gen, _ = configs_of(["generate", "responses", "data"])
    assert (gen.temperature, gen.top_p, gen.max_new_tokens) == (0.8, 0.95, 512)
    _, _, gen, _ = configs_of(["generate", "queries", "data", "--temperature", "0.2"])
    assert gen.temperature == 0.2


def test_config_file_errors_name_the_file_and_keys(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("max_doc_chars: 5\n")
    assert main(["pairs", str(tmp_path), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "max_doc_chars" in err and err.count("\n") == 1
    assert main(["pairs", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    assert main(["chains"]) == 2
    assert "FOLDER is required" in capsys.readouterr().err


def test_only_spanpref_errors_become_one_line(tmp_path, monkeypatch, capsys):
    from spanpref import pairs

    assert main(["pairs", str(tmp_path / "nowhere")]) == 2  # a SpanprefError: one line, exit code 2
    assert capsys.readouterr().err.startswith("error: ")

    def broken(*args, **kwargs):
        raise ValueError("a bug, not a user mistake")

    monkeypatch.setattr(pairs, "build_pairs", broken)
    (tmp_path / "README.md").write_text("")
    with pytest.raises(ValueError, match="a bug"):  # anything else keeps its traceback
        main(["pairs", str(tmp_path)])


def test_every_command_answers_help(capsys):
    commands = get_commands()
    assert len({c.path for c in commands}) == len(commands)
    for argv in [["--help"]] + [[*c.path, "--help"] for c in commands if not c.passthrough]:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 0, argv
        assert "usage: spanpref" in capsys.readouterr().out


@pytest.mark.slow
def test_train_commands_answer_help_with_the_recipe_options(capsys):
    for stage in ("sft", "dpo"):
        with pytest.raises(SystemExit) as exit_:
            main(["train", stage, "--help"])
        assert exit_.value.code == 0
        assert "--learning_rate" in capsys.readouterr().out


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def _module(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_library_code_never_imports_the_command_layer_and_has_no_import_cycle():
    files = [p for p in SRC.rglob("*.py") if "recipes" not in p.parts]
    outside = [p for p in files if p.parent.name != "commands" and p.name != "cli.py"]
    offenders = {
        _module(p): sorted(i for i in _imports(p) if i.startswith(("spanpref.cli", "spanpref.commands")))
        for p in outside
    }
    assert not {m: i for m, i in offenders.items() if i}
    # module-level imports only: an import inside a function runs when it is called, after every module loaded
    modules = {_module(p): p for p in files}
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        deps = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("spanpref"):
                deps |= {d for d in (node.module, *(f"{node.module}.{a.name}" for a in node.names)) if d in modules}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in modules}
        graph[name] = deps - {name}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in graph[node]:
            if state.get(dep) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*stack[stack.index(dep) :], dep])}")
            if dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])
    assert len((SRC / "cli.py").read_text().splitlines()) <= 60


def _documented_command_lines() -> list[tuple[str, str]]:
    """(where, command line) for every `spanpref ...` line in README.md's code blocks and in recipe headers."""
    lines = []
    in_code = False
    readme = (ROOT / "README.md").read_text(encoding="utf-8").replace("\\\n", " ")
    for line in readme.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif in_code and line.strip().startswith("spanpref "):
            lines.append(("README.md", line))
    for recipe in sorted((ROOT / "recipes").rglob("*.yaml")):
        for line in recipe.read_text(encoding="utf-8").splitlines():
            if re.match(r"#\s+spanpref ", line):
                lines.append((str(recipe.relative_to(ROOT)), line.lstrip("# ")))
    return lines


def test_every_documented_command_line_parses(monkeypatch):
    monkeypatch.chdir(ROOT)  # the docs' relative paths (recipes/...) are from the repository root
    lines = _documented_command_lines()
    assert len(lines) >= 25
    _, subparsers = build_parser()
    for where, line in lines:
        line = re.split(r"\s+#\s|\s+\|\s|&&", line)[0]  # comments and pipes are not part of the command
        line = line.replace("[", " ").replace("]", " ").replace("...", " ")  # optional parts are options too
        argv = shlex.split(line)[1:]
        path = find_command(argv, subparsers)
        assert path is not None, f"{where}: {line!r} names no command"
        try:
            ns = parse(argv)
        except SystemExit as e:
            raise AssertionError(f"{where}: {line!r} does not parse") from e
        if not ns._command.passthrough:
            build_configs(ns._command, ns)
