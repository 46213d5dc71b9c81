"""Measured sections of the docs: a tool's output kept between `<!-- name: begin -->` and `<!-- name: end -->`."""

from __future__ import annotations

from pathlib import Path


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
