"""Slice propagation (`runtime.volume`): mechanics on the tiny bundle (each slice encoded once, the background
worker, anchors and corrections), quality and stopping on a real medvol-dev volume with the real bundle
($SAMMED_BUNDLE), and the two volume subcommands."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from sammed_edge.runtime import Predictor
from sammed_edge.runtime.errors import InputError
from sammed_edge.runtime.io import read_nifti_volume
from sammed_edge.runtime.metrics import box_from_mask, dice
from sammed_edge.runtime.volume import PropagationSettings, VolumeSegmenter, nearest_first

nib = pytest.importorskip("nibabel")

CASE = "lidc_0141_nodule1"  # a nodule the default bundle segments well; docs/volumes.md has the harder ones


def phantom_stack(count: int = 7, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """S x H x W uint8 slices of a bright disc whose radius shrinks to nothing at both ends, and its masks."""
    yy, xx = np.mgrid[:size, :size]
    images, masks = [], []
    for k in range(count):
        radius = max(size * 0.3 * (1 - abs(k - count // 2) / (count // 2 + 0.5)), 0)
        mask = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= radius**2
        images.append(np.where(mask, 220, 30).astype(np.uint8) + (k % 3).__int__())
        masks.append(mask)
    return np.stack(images), np.stack(masks)


@pytest.fixture()
def tiny_predictor(tiny_bundle):
    return Predictor.from_bundle(tiny_bundle, threads=1, cache_size=2)


def test_nearest_first_order():
    assert nearest_first(2, 5) == [2, 3, 1, 4, 0]
    assert nearest_first(0, 3, limit=2) == [0, 1]


def test_each_slice_is_encoded_once_and_the_background_worker_changes_nothing(tiny_predictor, tiny_bundle):
    images, masks = phantom_stack()
    center = len(images) // 2
    segmenter = VolumeSegmenter(tiny_predictor, images, PropagationSettings(min_iou=0.0, min_area_ratio=0.0))
    assert tiny_predictor.cache_size >= len(images)  # grown to hold the volume
    segmenter.prompt(center, box=box_from_mask(masks[center]))
    run = segmenter.propagate()
    visited = segmenter.encoder.encoded
    assert set(run["slices"]) <= visited and len(visited) >= 2
    assert tiny_predictor.cache_misses == len(visited)
    again = segmenter.propagate()  # everything from the cache now
    assert tiny_predictor.cache_misses == len(visited) and again["slices"] == run["slices"]

    fresh = Predictor.from_bundle(tiny_bundle, threads=1, cache_size=0)
    background = VolumeSegmenter(fresh, images, PropagationSettings(min_iou=0.0, min_area_ratio=0.0))
    background.start_background(center)
    background.prompt(center, box=box_from_mask(masks[center]))
    ticks = []
    background.propagate(progress=lambda done, total: ticks.append((done, total)))
    background.stop_background()
    assert background.encoder.encoded >= set(run["slices"])
    assert fresh.cache_misses <= len(images)  # the worker and the propagation never encoded a slice twice
    np.testing.assert_array_equal(background.label_volume(), segmenter.label_volume())
    assert ticks and ticks[-1][0] == ticks[-1][1]


def test_anchors_split_the_volume_and_corrections_repropagate(tiny_predictor):
    images, masks = phantom_stack(9)
    segmenter = VolumeSegmenter(tiny_predictor, images, PropagationSettings(min_iou=0.0, min_area_ratio=0.0))
    segmenter.set_mask(2, masks[4])
    segmenter.set_mask(6, masks[4])
    run = segmenter.propagate()
    walks = {(s["anchor"], s["direction"]): s for s in run["stops"]}
    assert walks[(2, 1)]["last"] <= 4 and walks[(6, -1)]["last"] >= 5  # each anchor walks to the middle
    corrected = segmenter.prompt(3, points=[(24, 24)], point_labels=[1])
    assert corrected.anchor and segmenter.structures[1].anchors == [2, 3, 6]
    segmenter.propagate(start=3)
    assert segmenter.structures[1].slices[3].anchor and corrected.mask.shape == images.shape[1:]
    with pytest.raises(InputError, match="out of range"):
        segmenter.prompt(99, box=(1, 1, 5, 5))
    with pytest.raises(InputError, match="no prompted slice"):
        segmenter.propagate(label=7)
    with pytest.raises(InputError, match="needs a box"):
        segmenter.prompt(1)


def test_several_structures_make_one_label_volume(tiny_predictor):
    images, masks = phantom_stack()
    segmenter = VolumeSegmenter(tiny_predictor, images)
    segmenter.set_mask(3, masks[3], label=1)
    small = np.zeros_like(masks[3])
    small[2:6, 2:6] = True
    segmenter.set_mask(1, small, label=5)
    labels = segmenter.label_volume()
    assert set(np.unique(labels[3])) == {0, 1} and set(np.unique(labels[1])) <= {0, 5} and (labels[1] == 5).sum() == 16


@pytest.fixture(scope="module")
def nodule(medvol_dev):
    folder = medvol_dev
    volume = read_nifti_volume(folder / "images" / f"{CASE}.nii.gz", window="lung")
    truth = volume.from_voxels(np.asarray(nib.load(folder / "labels" / f"{CASE}.nii.gz").dataobj)) > 0
    return volume, truth


def test_real_volume_propagates_and_stops_at_the_structure_end(nodule):
    bundle = os.environ.get("SAMMED_BUNDLE")
    if not bundle:
        pytest.skip("set SAMMED_BUNDLE to a real bundle (e.g. out/lite_medsam_clicks-onnx-fp32) to check propagation quality")
    volume, truth = nodule
    areas = truth.sum(axis=(1, 2))
    largest, top = int(np.argmax(areas)), int(np.flatnonzero(areas)[-1])
    # from the nodule's largest slice up to 4 slices past its upper end
    keep = slice(largest, min(top + 5, volume.num_slices))
    images, part = volume.images[keep], truth[keep]
    predictor = Predictor.from_bundle(bundle, threads=1)
    segmenter = VolumeSegmenter(predictor, images)
    segmenter.prompt(0, box=box_from_mask(part[0]))
    run = segmenter.propagate()
    pred = segmenter.mask_volume()
    assert dice(pred, part) > 0.6, dice(pred, part)
    end = top - largest
    up = next(stop for stop in run["stops"] if stop["direction"] == 1)
    assert up["reason"] != "end of volume" and end - 4 <= up["last"] <= end + 1, (up, end)


def test_cli_segment_volume_and_evaluate_volume(tiny_bundle, nodule, tmp_path):
    volume, truth = nodule
    folder = tmp_path / "data"
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    keep = slice(int(np.argmax(truth.sum(axis=(1, 2)))) - 2, int(np.argmax(truth.sum(axis=(1, 2)))) + 3)
    voxels = np.transpose(volume.values[keep], (2, 1, 0))
    labels = np.transpose(truth[keep], (2, 1, 0)).astype(np.uint8)
    nib.save(nib.Nifti1Image(voxels, volume.affine), folder / "images" / "case.nii.gz")
    nib.save(nib.Nifti1Image(labels, volume.affine), folder / "labels" / "case.nii.gz")
    box = [str(int(v)) for v in box_from_mask(truth[keep][2])]
    out = tmp_path / "seg.nii.gz"
    command = [sys.executable, "-m", "sammed_edge.runtime.cli"]
    result = subprocess.run(command + ["segment-volume", "--bundle", str(tiny_bundle), "--image", str(folder / "images" / "case.nii.gz"),
                                       "--slice", "2", "--box", *box, "--out", str(out), "--no-progress"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    written = nib.load(out)
    assert written.shape == voxels.shape and np.allclose(written.affine, volume.affine)
    assert np.asarray(written.dataobj)[:, :, 2].any()
    bad = subprocess.run(command + ["segment-volume", "--bundle", str(tiny_bundle), "--image", str(folder / "images" / "case.nii.gz"),
                                    "--slice", "40", "--box", *box], capture_output=True, text=True)
    assert bad.returncode == 2 and "slice 40 is out of range" in bad.stderr
    report = tmp_path / "report"
    result = subprocess.run(command + ["evaluate-volume", "--bundle", str(tiny_bundle), "--data", str(folder), "--out", str(report),
                                       "--no-progress"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = (report / "report.md").read_text()
    assert "| case | label_1 |" in text and "oracle" in text


def test_surface_dice_counts_surface_voxels_within_the_tolerance():
    from sammed_edge.runtime.metrics import surface_dice

    cube = np.zeros((12, 12, 12), bool)
    cube[3:8, 3:8, 3:8] = True
    shifted = np.roll(cube, 1, axis=2)
    assert surface_dice(cube, cube, (1, 1, 1)) == 1.0
    assert surface_dice(cube, shifted, (1, 1, 1), tolerance=2.0) == 1.0
    assert surface_dice(cube, np.roll(cube, 3, axis=2), (1, 1, 1), tolerance=2.0) < 1.0
    # the same shift is beyond 2 mm when the voxels are 3 mm deep
    assert surface_dice(cube, shifted, (1, 1, 3), tolerance=2.0) < 1.0
    assert surface_dice(cube, np.zeros_like(cube), (1, 1, 1)) == 0.0
    assert surface_dice(np.zeros_like(cube), np.zeros_like(cube), (1, 1, 1)) == 1.0


def test_mask_to_low_res_inverts_the_logit_postprocessing():
    from sammed_edge.runtime import processing

    policy = processing.family_policy("lite_medsam")
    mask = np.zeros((60, 90), bool)
    mask[10:40, 20:70] = True
    low = np.where(processing.mask_to_low_res(mask, policy) > 0.5, 8.0, -8.0).astype(np.float32)
    geometry = processing.ImageGeometry((60, 90), processing.resized_size((60, 90), policy))
    back = processing.postprocess_logits(low[None], geometry, policy)[0] > 0
    assert dice(back, mask) > 0.97
    assert processing.expand_box((2, 3, 50, 58), 5, (60, 90)).tolist() == [0, 0, 55, 59]
