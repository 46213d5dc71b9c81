"""Measured doc sections are replaced between their markers, keeping the prose around them."""

from sammed_edge.export.doc_sections import write_section


def test_write_section_replaces_between_markers_and_appends_otherwise(tmp_path):
    path = tmp_path / "doc.md"
    write_section(path, "tool", "first\n")
    path.write_text("intro\n\n" + path.read_text() + "\noutro\n")
    write_section(path, "tool", "second\n")
    assert path.read_text() == "intro\n\n<!-- tool: begin -->\nsecond\n<!-- tool: end -->\n\noutro\n"
    write_section(path, "other", "x\n")
    assert path.read_text().endswith("outro\n\n<!-- other: begin -->\nx\n<!-- other: end -->\n")
