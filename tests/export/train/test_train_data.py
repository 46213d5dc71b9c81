"""The split by source and ground truth in the decoder's frame."""

from __future__ import annotations

import numpy as np
import pytest

from sammed_edge.export.train.data import frame_size, load_mask_set, mask_to_frame, split_by_source, validation_sources
from sammed_edge.runtime.io import read_dataset
from sammed_edge.runtime.processing import family_policy


def test_split_holds_out_one_source_per_multi_source_modality(tiny_dataset):
    items = read_dataset(tiny_dataset)
    held = validation_sources(items)
    assert len(held) == 2
    assert sum(source.startswith("ct-") for source in held) == 1
    assert sum(source.startswith("mr-") for source in held) == 1
    assert "us-a" not in held  # a modality's only source stays in training


def test_split_is_disjoint_complete_and_deterministic(tiny_dataset):
    items = read_dataset(tiny_dataset)
    train, val = split_by_source(items)
    assert {i.source for i in train}.isdisjoint({i.source for i in val})
    assert sorted(map(str, (i.mask for i in train + val))) == sorted(map(str, (i.mask for i in items)))
    again = split_by_source(list(reversed(items)))
    assert sorted(i.source for i in again[1]) == sorted(i.source for i in val)
    assert {i.source for i in split_by_source(items, validation=["us-a"])[1]} == {"us-a"}
    with pytest.raises(ValueError, match="not in the dataset"):
        split_by_source(items, validation=["nowhere"])


def test_medseg_dev_validation_sources(shared):
    root = shared("data", "medseg-dev")
    held = validation_sources(read_dataset(root))
    assert held == [
        "BUSI breast ultrasound (Al-Dhabyani et al.)",
        "CHAOS CT liver (2D slices)",
        "Drishti-GS1 (training split)",
        "LGG MRI segmentation (TCGA, Buda et al., Kaggle)",
    ]


def test_mask_in_the_decoder_frame():
    policy = family_policy("lite_medsam", input_size=64, low_res_size=64)
    mask = np.zeros((50, 100), dtype=bool)
    mask[10:30, 20:60] = True
    framed = mask_to_frame(mask, policy)
    assert framed.shape == (64, 64)
    assert frame_size(mask.shape, policy) == (32, 64)
    assert not framed[32:].any()  # padding below the image
    ys, xs = np.nonzero(framed)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (6, 18, 13, 37)  # rows 6.4-19.2, columns 12.8-38.4: pixels at least half covered
    tiny = np.zeros((400, 400), dtype=bool)
    tiny[200, 200] = True  # far below half a frame pixel: kept, not lost
    assert mask_to_frame(tiny, policy).sum() == 1
    stretch = family_policy("sam_med2d", input_size=256, low_res_size=64)
    assert frame_size((50, 100), stretch) == (64, 64)


def test_load_mask_set(tiny_dataset):
    policy = family_policy("lite_medsam", input_size=64, low_res_size=64)
    items = read_dataset(tiny_dataset)
    masks = load_mask_set(items, policy, progress=False)
    assert len(masks) == len(items) and masks.masks.shape == (len(items), 64, 64)
    assert len(masks.images) == len(items) // 2
    assert all(masks.images[j].path == item.image and masks.images[j].view.identity for j, item in zip(masks.image_index, masks.items))
    for truth, (height, width) in zip(masks.masks, masks.regions):
        assert truth.any() and not truth[height:].any() and not truth[:, width:].any()


def test_leave_sources_out_in_rounds(tiny_dataset):
    from sammed_edge.export.train.data import leave_sources_out

    items = read_dataset(tiny_dataset)
    first = [item for item in items if item.source in ("ct-a", "ct-b", "us-a")]
    second = [item for item in items if item.source in ("mr-a", "mr-b")]
    # one dataset: the plain rule
    assert leave_sources_out([items]) == validation_sources(items)
    held = leave_sources_out([first, second])
    # round 1 holds out one CT source of the first dataset; round 2 one MR source (CT has a single source left)
    assert sum(s.startswith("ct-") for s in held) == 1 and sum(s.startswith("mr-") for s in held) == 1
    assert held == leave_sources_out([first, second])  # deterministic
    assert "us-a" not in held


def test_medseg_train_rounds_keep_dev_validation_sources_out(shared):
    from sammed_edge.export.train.data import leave_sources_out

    dev = read_dataset(shared("data", "medseg-dev"))
    train = read_dataset(shared("data", "medseg-train"))
    held = leave_sources_out([dev, train])
    assert set(validation_sources(dev)) < set(held)
    # every modality with two or more remaining sources gave one more
    assert len(held) == 11 and "HVSMR 2016 whole-heart cardiovascular MR" in held and "Kvasir-SEG" in held


def test_cap_per_source_is_stable(tiny_dataset):
    from sammed_edge.runtime.io import cap_per_source

    items = read_dataset(tiny_dataset)
    capped = cap_per_source(items, 1)
    assert len(capped) == len({item.source for item in items})
    assert [i.mask for i in cap_per_source(list(reversed(items)), 1)] == [i.mask for i in reversed(capped)]
    # a source's choice does not depend on the other sources
    alone = [item for item in items if item.source == "ct-a"]
    assert [i.mask for i in cap_per_source(alone, 1)] == [i.mask for i in capped if i.source == "ct-a"]
    assert cap_per_source(items, None) == items
    with pytest.raises(ValueError, match=">= 1"):
        cap_per_source(items, 0)


def test_views_in_the_mask_set(tiny_dataset):
    from sammed_edge.export.train.data import concat_mask_sets

    policy = family_policy("lite_medsam", input_size=64, low_res_size=64)
    items = read_dataset(tiny_dataset)
    plain = load_mask_set(items, policy, progress=False)
    viewed = load_mask_set(items, policy, progress=False, views=3, seed=1)
    again = load_mask_set(items, policy, progress=False, views=3, seed=1)
    assert [ref.view for ref in viewed.images] == [ref.view for ref in again.images]  # views are seeded
    assert len(viewed.images) == 4 * len(plain.images) or len(viewed.images) > len(plain.images)
    assert len({int(g) for g in viewed.image_group}) == len(plain.images)
    identity = [i for i, ref in enumerate(viewed.images) if ref.view.identity]
    assert len(identity) == len(plain.images)
    # one view of every image per epoch: every image's masks exactly once
    epoch = viewed.epoch_indices(np.arange(len(viewed)), np.random.default_rng(0))
    groups = viewed.image_group[viewed.image_index[epoch]]
    assert sorted(set(groups.tolist())) == sorted(set(viewed.image_group.tolist()))
    assert all(len(set(viewed.image_index[epoch][groups == g].tolist())) == 1 for g in set(groups.tolist()))
    both = concat_mask_sets(plain, viewed)
    assert len(both) == len(plain) + len(viewed) and both.images[both.image_index[-1]] == viewed.images[viewed.image_index[-1]]
