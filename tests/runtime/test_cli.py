"""The command line as a shell uses it."""

from __future__ import annotations

import subprocess
import sys


def test_output_piped_into_a_reader_that_stops_early(tiny_bundle):
    """`sammed-edge info BUNDLE | head -1`: the reader closes the pipe; the command stops without a traceback."""
    command = [sys.executable, "-m", "sammed_edge.runtime.cli", "info", str(tiny_bundle)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone before the first line is written
    _, stderr = process.communicate(timeout=120)
    assert b"Traceback" not in stderr and b"BrokenPipeError" not in stderr, stderr.decode()
    assert process.returncode == 1


def test_info_prints_the_manifest_summary(tiny_bundle):
    out = subprocess.run([sys.executable, "-m", "sammed_edge.runtime.cli", "info", str(tiny_bundle)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "hashes verified" in out.stdout, out.stderr
