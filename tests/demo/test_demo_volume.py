"""The demo's volume handlers (`demo.volume`) on a real `Predictor` (the tiny bundle): background encoding when a
NIfTI slice is open, propagation equal to `VolumeSegmenter` run directly, masks shown again on other slices, and
the label volume export on the input's grid."""

from __future__ import annotations

import time

import numpy as np
import pytest

from sammed_edge.demo import state as st
from sammed_edge.demo import volume as dv
from sammed_edge.demo.examples import example_by_name
from sammed_edge.runtime import InputError, Predictor
from sammed_edge.runtime.io.volumes import read_nifti_volume
from sammed_edge.runtime.volume import VolumeSegmenter

nib = pytest.importorskip("nibabel")


def first_click(predictor: Predictor, image: np.ndarray) -> tuple[int, int]:
    """A pixel whose single click gives a non-empty mask."""
    predictor.set_image(image)
    height, width = image.shape[:2]
    for y in np.linspace(0.2 * height, 0.8 * height, 6).astype(int):
        for x in np.linspace(0.2 * width, 0.8 * width, 6).astype(int):
            if predictor.predict(point_coords=[[x, y]], point_labels=[1], best_only=True)[0][0].any():
                return int(x), int(y)
    pytest.fail("no pixel of the example gives a non-empty single-click mask")


def test_propagate_in_the_demo_is_the_runtime_propagation(engine, session, tiny_bundle, tmp_path):
    example = example_by_name("NIfTI anatomical")
    opened = dv.attach(engine, engine.open(session, example.path))
    assert opened.volume is not None and opened.volume.volume.num_slices == opened.view.count
    deadline = time.monotonic() + 60
    while len(opened.volume.segmenter.encoder.encoded) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(opened.volume.segmenter.encoder.encoded) >= 3  # neighbours encoded while the user looks

    predictor = Predictor.from_bundle(tiny_bundle, threads=1)
    x, y = first_click(predictor, opened.view.image)
    sy, sx = opened.view.geometry.scale
    clicked = engine.click(opened, (int((x + 0.5) * sx), int((y + 0.5) * sy)), "foreground")
    obj = clicked.state.active
    ticks = []
    done = dv.propagate(clicked, lambda d, t: ticks.append((d, t)))
    summary = dv.summary(done)
    assert ticks and summary["labels"]["1"][0] <= opened.view.index <= summary["labels"]["1"][-1]

    volume = read_nifti_volume(example.path, axis=2)
    direct = VolumeSegmenter(predictor, volume)
    direct.set_mask(opened.view.index, obj.mask, 1, low_res=obj.prediction.low_res[obj.chosen])
    direct.propagate(1)
    np.testing.assert_array_equal(done.volume.segmenter.label_volume(), direct.label_volume())

    # another slice of the propagated range shows its mask as an object that clicks correct
    others = [k for k in summary["labels"]["1"] if k != opened.view.index]
    if others:
        moved = dv.attach(engine, engine.reslice(done, index=others[0]))
        assert moved.volume is done.volume
        np.testing.assert_array_equal(moved.state.active.mask, direct.structures[1].slices[others[0]].mask)

    path = dv.export(done, tmp_path)
    written = nib.load(path)
    source = nib.load(example.path)
    assert written.shape == source.shape[:3] and np.allclose(written.affine, source.affine)
    np.testing.assert_array_equal(np.asarray(written.dataobj), volume.to_voxels(direct.label_volume()))
    done.volume.segmenter.close()


def test_propagate_needs_a_volume_and_a_mask(engine, session):
    ct = example_by_name("CT")
    opened = dv.attach(engine, engine.open(session, ct.path, window=ct.window))
    assert opened.volume is None
    with pytest.raises(InputError, match="needs a NIfTI volume"):
        dv.propagate(opened)
    nifti = dv.attach(engine, engine.open(session, example_by_name("NIfTI anatomical").path))
    with pytest.raises(InputError, match="segment an object on this slice first"):
        dv.propagate(nifti)
    with pytest.raises(InputError, match="nothing propagated yet"):
        dv.export(nifti, ".")
    nifti.volume.segmenter.close()
    assert st.summary(nifti.state)["objects"][0]["clicks"] == []
