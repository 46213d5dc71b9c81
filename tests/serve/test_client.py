"""The RLE both sides share, the Python client, `sammed-edge segment --server` and the `serve` command's dispatch."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from sammed_edge.runtime.client import Client, ServerError
from sammed_edge.runtime.errors import InputError
from sammed_edge.runtime.io.rle import decode_rle, encode_rle


def test_rle_is_coco_uncompressed_column_major_starting_with_zeros():
    mask = np.array([[0, 1, 1], [0, 0, 1]], dtype=bool)  # column-major 0, 0, 1, 0, 1, 1
    assert encode_rle(mask) == {"size": [2, 3], "counts": [2, 1, 1, 2]}
    starts_set = np.array([[1, 0], [1, 1]], dtype=bool)  # column-major 1, 1, 0, 1
    assert encode_rle(starts_set)["counts"] == [0, 2, 1, 1]
    assert encode_rle(np.zeros((2, 2), bool))["counts"] == [4]
    rng = np.random.default_rng(0)
    for shape in ((1, 1), (7, 5), (64, 33)):
        for density in (0.0, 0.3, 1.0):
            mask = rng.random(shape) < density
            rle = encode_rle(mask)
            assert sum(rle["counts"]) == mask.size and np.array_equal(decode_rle(rle), mask)
    with pytest.raises(InputError, match="sum to"):
        decode_rle({"size": [2, 2], "counts": [1, 1]})
    with pytest.raises(InputError, match="non-negative"):
        decode_rle({"size": [2, 2], "counts": [5, -1]})
    with pytest.raises(InputError):
        decode_rle({"counts": [4]})


def test_client_round_trip_and_server_errors(server, reference, images, png_bytes, tmp_path):
    image = images[1]
    path = tmp_path / "phantom.png"
    path.write_bytes(png_bytes(image))
    with Client(server) as client:
        assert client.health() == {"status": "ok"} and client.ready()["ready"] is True
        session = client.create_session(path)
        masks, ious, timings = client.predict(session["session"], points=[[50, 40]], labels=[1], multimask=True)
        reference.set_image(image)
        want, want_iou, _ = reference.predict(point_coords=np.array([[50, 40]]), point_labels=np.array([1]))
        order = np.argsort(-want_iou, kind="stable")
        assert np.array_equal(masks, want[order]) and np.array_equal(ious, want_iou[order]) and "server" in timings
        png = client.mask_file(session["session"], "png")
        assert np.array_equal(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED) > 0, masks[0])
        client.delete(session["session"])
        with pytest.raises(ServerError) as refused:
            client.predict(session["session"], points=[[1, 1]], labels=[1])
        assert refused.value.status == 404 and "deleted" in refused.value.message
    with pytest.raises(ConnectionError, match="cannot reach"):
        Client("http://127.0.0.1:9", retries=0).health()


def test_segment_server_writes_the_mask_segment_bundle_writes(server, tiny_bundle, images, png_bytes, tmp_path, capsys):
    from sammed_edge.runtime.cli import main

    path = tmp_path / "phantom.png"
    path.write_bytes(png_bytes(images[2]))
    prompt = ["segment", "--image", str(path), "--point", "40", "35", "--negative", "5", "5"]
    assert main([*prompt, "--server", server, "--out", str(tmp_path / "remote.png")]) == 0
    assert main([*prompt, "--bundle", str(tiny_bundle), "--threads", "1", "--out", str(tmp_path / "local.png")]) == 0
    assert (tmp_path / "remote.png").read_bytes() == (tmp_path / "local.png").read_bytes()
    capsys.readouterr()
    assert main([*prompt, "--server", server, "--bundle", str(tiny_bundle)]) == 2
    assert "exactly one of --bundle" in capsys.readouterr().err
    assert main(["segment", "--server", server, "--image", str(path), "--point", "500", "5"]) == 2
    assert "outside" in capsys.readouterr().err


@pytest.mark.parametrize("modules, forbidden", [
    # the client and the CLI stay light: no torch, no server, no web framework
    ("sammed_edge.runtime.client, sammed_edge.runtime.cli", ("torch", "sammed_edge.serve", "fastapi", "ray")),
    # the server needs only the runtime
    ("sammed_edge.serve.app, sammed_edge.serve.service, sammed_edge.serve.cli, sammed_edge.serve.bench",
     ("torch", "sammed_edge.export", "sammed_edge.demo")),
])
def test_imports_stay_in_their_layer(modules, forbidden):
    probe = (f"import sys, {modules}; import sammed_edge.runtime.cli as cli; cli.build_parser(); "
             f"bad = [m for m in sys.modules if m.split('.')[0] in {forbidden!r} or m.startswith({forbidden!r})]; "
             "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_serve_subcommand_dispatches_to_the_installed_service(capsys):
    from sammed_edge.runtime.cli import main

    with pytest.raises(SystemExit) as done:
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and "--max-sessions" in out and "--token-file" in out
    with pytest.raises(SystemExit, match="needs --token-file"):
        main(["serve", "--bundle", "b", "--host", "0.0.0.0"])

