"""Augmented views: deterministic, image and masks transformed together, zoom crops as the runtime crops them."""

from __future__ import annotations

import numpy as np

from sammed_edge.export.train import augment
from sammed_edge.runtime import metrics, zoom


def _image_and_masks():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    small = np.zeros((90, 120), dtype=bool)
    small[40:46, 70:78] = True
    large = np.zeros((90, 120), dtype=bool)
    large[5:80, 5:60] = True
    return image, [small, large]


def test_views_are_deterministic_and_never_the_identity():
    image, masks = _image_and_masks()
    views = augment.sample_views(image.shape[:2], masks, 12, augment.view_rng(3, "a.png"))
    assert views == augment.sample_views(image.shape[:2], masks, 12, augment.view_rng(3, "a.png"))
    assert views != augment.sample_views(image.shape[:2], masks, 12, augment.view_rng(4, "a.png"))
    assert len(views) == 12 and not any(view.identity for view in views)


def test_geometry_moves_image_and_mask_together():
    image, masks = _image_and_masks()
    # mark the object's pixels in the image, so the transformed mask must land on the marked pixels
    marked = image.copy()
    marked[masks[0]] = 255
    marked[~masks[0]] = np.minimum(marked[~masks[0]], 200)
    for view in [augment.View(rotate=1), augment.View(flip=True), augment.View(rotate=3, flip=True),
                 augment.View(crop=(60, 30, 100, 60), rotate=2)]:
        out_image = augment.apply_image(marked, view)
        out_mask = augment.apply_mask(masks[0], view)
        assert out_mask is not None and out_image.shape[:2] == out_mask.shape
        np.testing.assert_array_equal(out_image[..., 0] == 255, out_mask)


def test_crop_drops_cut_objects_and_zoom_windows_match_the_runtime():
    image, masks = _image_and_masks()
    cut = augment.View(crop=(0, 0, 30, 90))
    assert augment.apply_mask(masks[1], cut) is None  # the large object is cut through
    rng = np.random.default_rng(0)
    settings = augment.AugmentSettings(zoom_prob=1.0, rotate_prob=0, flip_prob=0, gamma_prob=0, noise_prob=0)
    views = augment.sample_views(image.shape[:2], masks, 5, rng, settings)
    box = metrics.box_from_mask(masks[0])
    for view in views:
        x0, y0, x1, y1 = view.crop
        assert x0 <= box[0] and box[2] < x1 and y0 <= box[1] and box[3] < y1
        # the runtime's window rule with a context of 2-4: a square of at least min_side (or the whole image side)
        assert (x1 - x0, y1 - y0) == (min(120, max(x1 - x0, zoom.ZoomPolicy.min_side)), min(90, max(x1 - x0, zoom.ZoomPolicy.min_side)))
        assert augment.apply_mask(masks[0], view).sum() == masks[0].sum()


def test_intensity_changes_keep_grey_images_grey():
    grey = np.repeat(np.linspace(0, 255, 64 * 64).reshape(64, 64, 1).astype(np.uint8), 3, axis=2)
    out = augment.apply_image(grey, augment.View(gamma=1.4, noise=5.0, seed=2))
    assert out.dtype == np.uint8 and out.shape == grey.shape
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert np.abs(out.astype(int) - grey.astype(int)).mean() > 1
    np.testing.assert_array_equal(out, augment.apply_image(grey, augment.View(gamma=1.4, noise=5.0, seed=2)))
