"""The runtime's numpy bilinear resize equals PyTorch's `interpolate(bilinear, align_corners=False)`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sammed_edge.runtime.processing import resize_bilinear


@pytest.mark.parametrize(
    "src, dst",
    [((64, 64), (256, 256)), ((256, 256), (300, 420)), ((195, 256), (389, 512)), ((256, 211), (400, 330)),
     ((256, 256), (100, 77)), ((64, 64), (17, 999)), ((256, 256), (1024, 1024)), ((7, 5), (7, 5))],
)
def test_bilinear_matches_torch(src, dst):
    maps = (np.random.default_rng(0).standard_normal((3, *src)) * 20).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(maps)[None], size=dst, mode="bilinear", align_corners=False)[0].numpy()
    np.testing.assert_allclose(resize_bilinear(maps, dst), expected, atol=2e-5, rtol=1e-6)
