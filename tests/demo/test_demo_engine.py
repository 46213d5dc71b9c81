"""The demo's handlers on a real `Predictor` (the tiny test bundle; real masks with $SAMMED_BUNDLE)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from sammed_edge.demo import state as st
from sammed_edge.demo.engine import MAX_PIXELS, DemoSession, Engine, window_value
from sammed_edge.demo.examples import example_by_name, find_examples
from sammed_edge.demo.render import display_geometry
from sammed_edge.runtime import InputError, Predictor
from sammed_edge.runtime.io.loading import load_for_segmentation
from sammed_edge.runtime.processing import mask_prompt_from_logits


def display_index(x: int, y: int, engine_session: DemoSession) -> tuple[int, int]:
    """The displayed-image pixel Gradio reports for a click at the centre of image pixel (x, y)."""
    sy, sx = engine_session.view.geometry.scale
    return int((x + 0.5) * sx), int((y + 0.5) * sy)


def reference(predictor: Predictor, image: np.ndarray, **kwargs) -> st.Prediction:
    predictor.set_image(image)
    return st.Prediction(*predictor.predict(**kwargs))


def test_examples_are_found_in_installed_packages():
    names = [e.name for e in find_examples()]
    assert {"CT", "MR", "Ultrasound", "NIfTI MR"} <= set(names)
    with pytest.raises(KeyError):
        example_by_name("nope")


@pytest.mark.parametrize("name", [e.name for e in find_examples()])
def test_every_example_opens(engine, session, name):
    example = example_by_name(name)
    opened = engine.open(session, example.path, window=example.window)
    view = opened.view
    assert view.kind == example.kind
    assert view.image.dtype == np.uint8 and view.image.ndim == 3
    assert view.display.shape[:2] == view.geometry.display_size == display_geometry(view.image.shape[:2]).display_size
    assert opened.state.size == view.image.shape[:2]
    assert opened.seq == session.seq + 1
    assert "encode_ms" in opened.timings


def test_click_gives_what_predictor_predict_gives(engine, session, tiny_bundle):
    example = example_by_name("CT")
    opened = engine.open(session, example.path, window="abdomen")
    clicked = engine.click(opened, display_index(70, 40, opened), "foreground")
    obj = clicked.state.active
    assert obj.clicks == (st.Click(70, 40, True),)
    predictor = Predictor.from_bundle(tiny_bundle)
    image = load_for_segmentation(example.path, window="abdomen").image
    expected = reference(predictor, image, point_coords=[[70, 40]], point_labels=[1])
    assert obj.chosen == int(np.argmax(expected.iou))
    np.testing.assert_array_equal(obj.mask, expected.masks[obj.chosen])
    np.testing.assert_allclose(obj.prediction.iou, expected.iou, rtol=1e-5, atol=1e-6)
    assert clicked.timings["decode_ms"] > 0 and clicked.timings["click_ms"] >= clicked.timings["decode_ms"]

    # the second click feeds the first mask back; two clicks are unambiguous: the single-mask output
    second = engine.click(clicked, display_index(20, 100, clicked), "background")
    expected2 = reference(
        predictor, image, point_coords=[[70, 40], [20, 100]], point_labels=[1, 0], multimask_output=False,
        mask_input=mask_prompt_from_logits(obj.prediction.low_res[obj.chosen], predictor.policy),
    )
    assert second.state.active.prediction.masks.shape[0] == 1
    np.testing.assert_array_equal(second.state.active.mask, expected2.masks[0])
    always = engine.click(clicked, display_index(20, 100, clicked), "background", multimask="always")
    assert always.state.active.prediction.masks.shape[0] == 3

    # undo returns to the first click's mask without running the model
    undone = engine.undo(second)
    assert st.mask_digest(undone.state.active.mask) == st.mask_digest(obj.mask)


def test_box_by_two_clicks(engine, session, tiny_bundle):
    example = example_by_name("MR")
    opened = engine.open(session, example.path)
    corner = engine.click(opened, display_index(40, 50, opened), "box")
    assert corner.state.pending_corner == (40, 50) and corner.state.active.prediction is None
    boxed = engine.click(corner, display_index(10, 12, corner), "box")
    assert boxed.state.active.box == (10, 12, 40, 50)
    predictor = Predictor.from_bundle(tiny_bundle)
    expected = reference(predictor, opened.view.image, box=[10, 12, 40, 50], multimask_output=False)
    np.testing.assert_array_equal(boxed.state.active.mask, expected.masks[0])


def test_objects_choose_reset_and_unknown_mode(engine, session):
    opened = engine.open(session, example_by_name("MR").path)
    one = engine.click(opened, display_index(30, 30, opened))
    assert one.state.active.prediction.masks.shape[0] == 3  # a lone click is ambiguous: three candidates
    other = (one.state.active.chosen + 1) % one.state.active.prediction.masks.shape[0]
    chosen = engine.choose(one, other)
    assert chosen.state.active.chosen == other
    two = engine.click(engine.new_object(chosen), display_index(5, 5, chosen))
    assert [o.label for o in two.state.objects] == [1, 2]
    assert two.state.active.prediction is not None
    assert set(np.unique(st.label_map(two.state))) <= {0, 1, 2}
    cleared = engine.reset(two)
    assert len(cleared.state.objects) == 1 and not cleared.state.active.has_prompt
    with pytest.raises(InputError, match="mode"):
        engine.click(opened, (0, 0), "lasso")
    with pytest.raises(InputError, match="load an image"):
        engine.click(DemoSession(), (0, 0))


def test_nifti_slices_come_back_from_the_cache(engine, session):
    example = example_by_name("NIfTI MR")
    first = engine.open(session, example.path)
    view = first.view
    assert view.kind == "nifti" and view.axis == 2 and view.index == view.count // 2
    moved = engine.reslice(first, index=view.index + 1)
    assert moved.view.index == view.index + 1 and not moved.timings["encode_cached"]
    hits = engine.predictor.cache_hits
    back = engine.reslice(moved, index=view.index)
    assert back.timings["encode_cached"] and engine.predictor.cache_hits == hits + 1
    np.testing.assert_array_equal(back.view.image, view.image)
    turned = engine.reslice(back, axis=0)
    assert turned.view.axis == 0 and turned.view.index == turned.view.count // 2
    assert turned.view.image.shape[:2] == (24, 96)


def test_window_presets_and_manual_window(engine, session):
    path = example_by_name("CT").path
    auto = engine.open(session, path).view.image
    lung = engine.open(session, path, window=window_value("lung")).view.image
    manual = engine.open(session, path, window=window_value("manual", -600, 1500)).view.image
    assert not np.array_equal(auto, lung)
    np.testing.assert_array_equal(lung, manual)
    assert window_value("auto") is None
    with pytest.raises(InputError):
        window_value("manual", 40, 0)
    with pytest.raises(InputError):
        window_value("liver")


def test_unreadable_and_unsupported_files_are_input_errors(engine, session, tmp_path):
    garbage = tmp_path / "scan.png"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(InputError):
        engine.open(session, garbage)
    fake_dicom = tmp_path / "scan.dcm"
    fake_dicom.write_bytes(b"\0" * 128 + b"DICM" + b"\x01" * 64)
    with pytest.raises(InputError):
        engine.open(session, fake_dicom)
    plan = example_by_name("CT").path.with_name("rtplan.dcm")  # pydicom's RT Plan: no pixel data
    with pytest.raises(InputError, match="no pixel data"):
        engine.open(session, plan)
    with pytest.raises(InputError):
        engine.open(session, tmp_path / "missing.nii.gz")


def test_huge_image_is_refused_before_decoding(engine, session, tmp_path):
    side = int(np.sqrt(MAX_PIXELS)) + 100
    path = tmp_path / "huge.png"
    cv2.imwrite(str(path), np.zeros((side, side), np.uint8))
    with pytest.raises(InputError, match="MP"):
        engine.open(session, path)


def test_raster_upload(engine, session, tmp_path):
    image = np.zeros((90, 120, 3), np.uint8)
    cv2.circle(image, (60, 45), 20, (200, 200, 200), -1)
    path = tmp_path / "photo.jpg"
    cv2.imwrite(str(path), image)
    opened = engine.open(session, path, window="abdomen")  # a window does not apply to raster images: ignored
    assert opened.view.kind == "raster" and opened.view.window is None
    assert opened.view.geometry.display_size == (450, 600)  # enlarged 5 times


def test_exports(engine, session, tmp_path):
    nib = pytest.importorskip("nibabel")
    pydicom = pytest.importorskip("pydicom")
    with pytest.raises(InputError, match="nothing to export"):
        engine.export(engine.open(session, example_by_name("CT").path), "png", tmp_path)

    # DICOM: PNG label map, NIfTI aligned with the slice, DICOM-SEG with one segment per object
    ct = engine.open(session, example_by_name("CT").path)
    ct = engine.click(ct, display_index(64, 64, ct))
    ct = engine.click(engine.new_object(ct), display_index(20, 20, ct))
    labels = st.label_map(ct.state)
    png = engine.export(ct, "png", tmp_path)
    np.testing.assert_array_equal(cv2.imread(str(png), cv2.IMREAD_UNCHANGED), labels)
    nifti = engine.export(ct, "nifti", tmp_path)
    volume = np.asarray(nib.load(nifti).dataobj)
    np.testing.assert_array_equal(volume[:, :, 0].T, labels)
    pytest.importorskip("highdicom")
    seg = pydicom.dcmread(engine.export(ct, "dicom-seg", tmp_path))
    assert seg.Modality == "SEG" and len(seg.SegmentSequence) == 2
    with pytest.raises(InputError, match="unknown export"):
        engine.export(ct, "jpeg", tmp_path)

    # NIfTI: the label volume has the input's shape, labels on the slice that was segmented
    example = example_by_name("NIfTI MR")
    mr = engine.open(session, example.path, index=5)
    mr = engine.click(mr, display_index(40, 40, mr))
    path = engine.export(mr, "nifti", tmp_path)
    written = nib.load(path)
    source = nib.load(example.path)
    assert written.shape == source.shape[:3]
    np.testing.assert_allclose(written.affine, source.affine)
    np.testing.assert_array_equal(np.asarray(written.dataobj)[:, :, 5].T, st.label_map(mr.state))
    assert np.asarray(written.dataobj)[:, :, 4].max() == 0
    with pytest.raises(InputError, match="DICOM-SEG needs a DICOM"):
        engine.export(mr, "dicom-seg", tmp_path)

    # raster: PNG only
    image_path = tmp_path / "photo.png"
    cv2.imwrite(str(image_path), np.full((40, 50, 3), 90, np.uint8))
    photo = engine.open(session, image_path)
    photo = engine.click(photo, display_index(10, 10, photo))
    with pytest.raises(InputError, match="raster|DICOM or NIfTI"):
        engine.export(photo, "nifti", tmp_path)


def test_real_model_box_on_ct(real_bundle, session):
    """With the real model a box around the spinal canal of the CT example segments the canal."""
    engine = Engine.from_bundle(real_bundle)
    example = example_by_name("CT")
    opened = engine.open(session, example.path, window=example.window)
    corner = engine.click(opened, display_index(46, 40, opened), "box")
    boxed = engine.click(corner, display_index(72, 64, opened), "box")
    mask = boxed.state.active.mask
    predictor = Predictor.from_bundle(real_bundle)
    expected = reference(predictor, opened.view.image, box=[46, 40, 72, 64], multimask_output=False)
    np.testing.assert_array_equal(mask, expected.masks[0])
    assert float(boxed.state.active.prediction.iou[0]) > 0.8
    # the canal is a dark disc of about 20 pixels across inside the box; the mask must be it, not the box
    assert 200 < mask.sum() < 0.7 * 27 * 25 and mask[40:65, 46:73].sum() == mask.sum()
    assert mask[52, 58]
