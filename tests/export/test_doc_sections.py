"""Measured doc sections are replaced between their markers, keeping the prose around them."""

from sammed_edge.export.studies.doc_sections import write_section


def test_write_section_replaces_between_markers_and_appends_otherwise(tmp_path):
    path = tmp_path / "doc.md"
    write_section(path, "tool", "first\n")
    path.write_text("intro\n\n" + path.read_text() + "\noutro\n")
    write_section(path, "tool", "second\n")
    assert path.read_text() == "intro\n\n<!-- tool: begin -->\nsecond\n<!-- tool: end -->\n\noutro\n"
    write_section(path, "other", "x\n")
    assert path.read_text().endswith("outro\n\n<!-- other: begin -->\nx\n<!-- other: end -->\n")


def test_publish_prints_and_writes_the_section_and_json(tmp_path, capsys):
    import json

    from sammed_edge.export.studies.doc_sections import command_line, publish

    doc, data = tmp_path / "doc.md", tmp_path / "rows.json"
    publish("| a |\n", [{"a": 1}], doc, "tool", data)
    assert capsys.readouterr().out == "| a |\n\n"
    assert "<!-- tool: begin -->\n| a |\n<!-- tool: end -->" in doc.read_text()
    assert json.loads(data.read_text()) == [{"a": 1}]
    publish("| b |\n", [], None, "tool", None)  # print only
    assert "| a |" in doc.read_text()
    assert command_line("pkg.tool", ["--rounds", "3"]) == "python -m pkg.tool --rounds 3"
