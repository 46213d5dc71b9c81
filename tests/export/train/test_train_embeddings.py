"""The embedding cache: keys, hits and misses."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from sammed_edge.export.train.embeddings import EmbeddingCache, cache_key, encoder_digest
from sammed_edge.runtime.samples import phantom


def test_key_depends_on_image_encoder_and_policy(tiny_lite, make_lite):
    policy = tiny_lite.processing_policy()
    digest = encoder_digest(tiny_lite)
    key = cache_key("image-a", digest, policy)
    assert key == cache_key("image-a", digest, policy)
    assert key != cache_key("image-b", digest, policy)
    assert key != cache_key("image-a", encoder_digest(make_lite(seed=1)), policy)
    assert key != cache_key("image-a", digest, dataclasses.replace(policy, interpolation="linear"))
    # decoder weights do not change the embedding, so they do not change the key
    with torch.no_grad():
        tiny_lite.mask_decoder.iou_token.weight.add_(1.0)
    assert encoder_digest(tiny_lite) == digest


def test_miss_then_hit(tiny_lite, make_lite, tmp_path):
    image = phantom(90, seed=3)[0][:, :70]
    cache = EmbeddingCache(tiny_lite, tmp_path / "cache")
    first = cache.get(image)
    assert (cache.hits, cache.misses) == (0, 1)
    assert first.dtype == np.float16 and first.shape == (16, 16, 16)
    second = cache.get(image.copy())
    assert (cache.hits, cache.misses) == (1, 1)
    np.testing.assert_array_equal(first, second)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cache.path(image).name]  # no temporary file left
    cache.get(image[:, :60])
    assert cache.misses == 2
    from sammed_edge.export.predictor import TorchPredictor

    predictor = TorchPredictor(tiny_lite)
    predictor.set_image(image)
    np.testing.assert_allclose(first.astype(np.float32), predictor.embedding[0].numpy(), atol=2e-3, rtol=2e-3)
    # another encoder misses the entries of the first
    other = EmbeddingCache(make_lite(seed=1), tmp_path / "cache")
    other.get(image)
    assert (other.hits, other.misses) == (0, 1)
