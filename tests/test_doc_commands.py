"""Every command README.md and docs/*.md show still exists and parses `--help`.

Commands are read from the docs' code: fenced and indented blocks, and inline code spans. Three kinds are checked:
`python -m sammed_edge.<module> ...`, `python <part>/<file>.py ...` (a file of one of the parts, e.g.
`python export/build.py`) and the console scripts of pyproject.toml (`sammed-edge <subcommand> ...`,
`sammed-edge-convert ...`). Each is checked in this process: the module imports and its `main(["--help"])` (or
`main([subcommand, "--help"])`) prints argparse's usage and exits 0. The rest of a command line (its flags and
paths) is not checked; commands of other programs (pip, pytest, make) are not read.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))

_FENCE = re.compile(r"^ {0,3}(```|~~~)[^\n]*\n(.*?)^ {0,3}\1", re.S | re.M)
_INDENTED = re.compile(r"(?:^(?: {4}|\t)[^\n]*\n?)+", re.M)
_INLINE = re.compile(r"(?<!`)`([^`]+)`(?!`)")
# a module name ends at a word character: `python -m sammed_edge.export.studies.<name>` is a placeholder, not a command
_MODULE = re.compile(r"(?:^|(?<=[\s/(]))python3? -m (sammed_edge(?:\.\w+)*)(?![.\w<])")
_SCRIPT = re.compile(r"(?:^|(?<=[\s/(]))python3? ((?:[\w-]+/)+[\w-]+\.py)\b")


@dataclass(frozen=True)
class Command:
    """One documented command: what to import and the arguments that ask it for help."""

    module: str
    argv: tuple[str, ...]
    where: str  # first place it is shown, "file:line"
    text: str


def _scripts() -> dict[str, str]:
    """Console script name -> "module:function", from pyproject.toml."""
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def _file_module(path: str) -> str | None:
    """The dotted module of a file of one of the parts (`export/build.py` -> `sammed_edge.export.build`)."""
    dirs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in dirs.items():
        if path.startswith(folder + "/"):
            return ".".join([package, *Path(path[len(folder) + 1:]).with_suffix("").parts])
    return None


def _code_pieces(text: str) -> list[tuple[int, str]]:
    """(offset, code) for every fenced block, indented block and inline code span of a Markdown text."""
    pieces, covered = [], []
    for match in _FENCE.finditer(text):
        pieces.append((match.start(2), match.group(2)))
        covered.append(match.span())
    outside = "".join(ch if not any(a <= i < b for a, b in covered) else ("\n" if ch == "\n" else " ")
                      for i, ch in enumerate(text))
    for match in _INDENTED.finditer(outside):
        pieces.append((match.start(), match.group(0)))
    for match in _INLINE.finditer(outside):
        pieces.append((match.start(1), " ".join(match.group(1).split())))  # a span may wrap onto the next line
    return pieces


def commands_in(text: str, name: str) -> list[Command]:
    """The checkable commands of one Markdown text (`name` labels where they are)."""
    scripts = _scripts()
    script_names = "|".join(sorted(map(re.escape, scripts), key=len, reverse=True))
    # a console script as a word of its own (or run from a venv's bin/), not inside a name, a path or an extra
    console = re.compile(rf"(?:^|(?<=[\s(])|(?<=/bin/))({script_names})(?![\w\-\[/.])(?:[ \t]+([a-z][\w-]*))?")
    found = []
    for offset, code in _code_pieces(text):
        code_line = text.count("\n", 0, offset) + 1
        for regex, kind in ((_MODULE, "module"), (_SCRIPT, "file"), (console, "console")):
            for match in regex.finditer(code):
                where = f"{name}:{code_line + code.count(chr(10), 0, match.start())}"
                if kind == "module":
                    found.append(Command(match.group(1), ("--help",), where, match.group(0)))
                elif kind == "file":
                    module = _file_module(match.group(1))
                    module = module or f"<no module for {match.group(1)}>"
                    found.append(Command(module, ("--help",), where, match.group(0)))
                else:
                    module = scripts[match.group(1)].split(":")[0]
                    sub = match.group(2)
                    found.append(Command(module, (sub, "--help") if sub else ("--help",), where, match.group(0)))
    return found


def documented_commands() -> list[Command]:
    """Every command of README.md and docs/*.md, once per (module, arguments), at its first place."""
    unique: dict[tuple[str, tuple[str, ...]], Command] = {}
    for path in DOCS:
        for command in commands_in(path.read_text(), path.relative_to(REPO).as_posix()):
            unique.setdefault((command.module, command.argv), command)
    return list(unique.values())


def help_problem(command: Command, capsys) -> str | None:
    """Why `command` does not answer `--help` (None when it does)."""
    try:
        if importlib.util.find_spec(command.module) is None:
            return f"no module {command.module}"
    except ModuleNotFoundError as exc:
        return f"no module {command.module}: {exc}"
    module = importlib.import_module(command.module)
    main = getattr(module, "main", None)
    if not callable(main):
        return f"{command.module} has no main(argv)"
    try:
        result = main(list(command.argv))
    except SystemExit as exc:
        code = exc.code
    else:
        return f"main({list(command.argv)}) returned {result!r} instead of printing help and exiting"
    out = capsys.readouterr().out
    if code not in (0, None):
        return f"main({list(command.argv)}) exited {code}"
    if "usage:" not in out:
        return f"main({list(command.argv)}) exited 0 without argparse's usage"
    return None


COMMANDS = documented_commands()


def test_the_docs_show_commands():
    # extraction that found nothing would pass every case below
    shown = {(c.module, c.argv[0]) for c in COMMANDS}
    assert {("sammed_edge.export.build", "--help"), ("sammed_edge.runtime.cli", "evaluate"),
            ("sammed_edge.export.studies.bench_targets", "--help")} <= shown, sorted(shown)


@pytest.mark.parametrize("command", COMMANDS, ids=[f"{c.where} {c.text}" for c in COMMANDS])
def test_documented_command_parses_help(command, capsys):
    assert help_problem(command, capsys) is None, f"{command.where}: `{command.text}`: {help_problem(command, capsys)}"


def test_reader_and_check_on_made_up_docs(capsys):
    text = "\n".join([
        "Run `python -m sammed_edge.export.studies.<name>` for a study, or:",
        "",
        "```bash",
        ".venv/bin/python -m sammed_edge.export.no_such_study --rounds 3",
        "python export/build.py --target onnx-fp32 \\",
        "    --out out/x",
        "sammed-edge no-such-subcommand --bundle b",
        "```",
        "",
        "    sammed-edge info out/bundle",
        "",
        'pip install "sammed-edge[onnxruntime]", cache in `~/.cache/sammed-edge`, then `sammed-edge\nbench --compare`.',
    ])
    found = [(c.module, c.argv, c.where) for c in commands_in(text, "x.md")]
    assert found == [
        ("sammed_edge.export.no_such_study", ("--help",), "x.md:4"),
        ("sammed_edge.export.build", ("--help",), "x.md:5"),
        ("sammed_edge.runtime.cli", ("no-such-subcommand", "--help"), "x.md:7"),
        ("sammed_edge.runtime.cli", ("info", "--help"), "x.md:10"),
        ("sammed_edge.runtime.cli", ("bench", "--help"), "x.md:12"),
    ]
    problems = [help_problem(Command(m, a, w, ""), capsys) for m, a, w in found]
    assert problems[0] == "no module sammed_edge.export.no_such_study"
    assert problems[2] == "main(['no-such-subcommand', '--help']) exited 2"
    assert problems[1] is None and problems[3] is None and problems[4] is None
