"""Measurement studies: scripts that measure a design choice and write its table to docs/, never imported by the
build path. Each runs with `python -m sammed_edge.export.studies.<name>`."""
