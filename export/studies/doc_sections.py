"""Measured sections of the docs: a tool's output kept between `<!-- name: begin -->` and `<!-- name: end -->`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def write_section(path: Path, name: str, text: str) -> None:
    """Replace the text between `name`'s markers in `path`, keeping the prose around it; without the markers,
    append them with `text` (creating the file)."""
    begin, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    old = path.read_text() if path.is_file() else ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = f"{head}{begin}\n{text}{end}{rest.split(end, 1)[1]}"
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + f"{begin}\n{text}{end}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def command_line(module: str, argv: list[str] | None) -> str:
    """How a tool was run, for its table's caption: `python -m module` and its arguments."""
    return " ".join(["python -m", module, *(argv if argv is not None else sys.argv[1:])])


def publish(text: str, data: Any, markdown: Path | None, section: str, json_path: Path | None) -> None:
    """Print a tool's table; write it into `markdown`'s `section` and `data` as JSON to `json_path` when given."""
    print(text)
    if markdown:
        write_section(markdown, section, text)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(data, indent=1) + "\n")
