"""On-disk cache of image embeddings for training with a frozen image encoder (the CPU mode).

An entry is one `.npy` file (C x h x w, float16) named by a key over everything the embedding depends on: the
decoded image's pixels (`runtime.predictor.image_key`), the image encoder's weights (`encoder_digest`) and the
processing policy. Changing any of them gives a new key, so a stale entry is never read; files are written
atomically, so an interrupted run leaves no half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from sammed_edge.runtime import processing
from sammed_edge.runtime.predictor import image_key
from sammed_edge.runtime.processing import ProcessingPolicy
from sammed_edge.runtime.progress import ProgressBar

from ..models.checkpoints import cache_dir
from ..models.sam import SamModel
from .data import ImageRef, load_image


def encoder_digest(model: SamModel) -> str:
    """sha256 (hex) of the image encoder's state dict: names, dtypes, shapes and values."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.image_encoder.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}\x00{tensor.dtype}\x00{tuple(tensor.shape)}\x00".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_key(image_digest: str, encoder: str, policy: ProcessingPolicy, split: int | None = None) -> str:
    """Name of one cache entry: sha256 over (image digest, encoder digest, policy as JSON[, split stage]), 32 hex
    digits; `split` names features before an encoder stage instead of the embedding."""
    entry = {"image": image_digest, "encoder": encoder, "policy": policy.to_dict()}
    if split is not None:
        entry["split"] = int(split)
    payload = json.dumps(entry, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def default_cache_dir() -> Path:
    """Where embeddings are cached by default: `<weights cache>/embeddings` (~/.cache/sammed-edge/embeddings)."""
    return cache_dir() / "embeddings"


class EmbeddingCache:
    """Embeddings of one model's image encoder (or its features before a stage), cached under `folder`.

    Args:
        model: the model whose encoder computes missing embeddings.
        folder: cache folder (created on first write); default `default_cache_dir()`.
        device: device to encode on (default: the model's).
        split: cache the encoder's features before stage `split` (`forward_head`), for training the stages
            after it (`forward_tail`), instead of the embedding. The key covers the whole encoder's weights, so
            features are recomputed after any change of the encoder (as embeddings are).

    Attributes:
        hits, misses: entries found / computed since construction.
    """

    def __init__(self, model: SamModel, folder: str | Path | None = None, device: str | torch.device | None = None,
                 split: int | None = None) -> None:
        if split is not None and not hasattr(model.image_encoder, "forward_head"):
            raise ValueError(f"the {type(model.image_encoder).__name__} encoder cannot be split into cached and trained stages")
        self.model = model
        self.split = split
        self.folder = Path(folder) if folder is not None else default_cache_dir()
        self.policy = model.processing_policy()
        self.encoder = encoder_digest(model)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.hits = 0
        self.misses = 0

    def path(self, image: np.ndarray) -> Path:
        """Cache file of an H x W x 3 uint8 image."""
        key = cache_key(image_key(processing.as_rgb_uint8(image)).hex(), self.encoder, self.policy, self.split)
        return self.folder / f"{key}.npy"

    def get(self, image: np.ndarray) -> np.ndarray:
        """C x h x w float16 embedding of an image, computed and stored on a miss."""
        path = self.path(image)
        if path.is_file():
            self.hits += 1
            return np.load(path)
        return self._compute(image, path)

    def ensure(self, image: np.ndarray) -> Path:
        """The cache file of an image's embedding, computed and stored on a miss (nothing read on a hit)."""
        path = self.path(image)
        if path.is_file():
            self.hits += 1
        else:
            self._compute(image, path)
        return path

    def _compute(self, image: np.ndarray, path: Path) -> np.ndarray:
        self.misses += 1
        embedding = self._encode(image)
        self.folder.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=self.folder, suffix=".npy.tmp")
        try:
            with os.fdopen(handle, "wb") as stream:
                np.save(stream, embedding)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return embedding

    @torch.inference_mode()
    def _encode(self, image: np.ndarray) -> np.ndarray:
        tensor, _ = processing.preprocess_image(image, self.policy)
        was_training = self.model.training
        self.model.eval()
        try:
            images = torch.from_numpy(tensor).to(self.device)
            if self.split is None:
                embedding = self.model.encode(images)
            else:
                embedding = self.model.image_encoder.forward_head(images, self.split)
        finally:
            self.model.train(was_training)
        return embedding[0].float().cpu().numpy().astype(np.float16)

    def files(self, images: Sequence[ImageRef | str | Path], progress: bool = True) -> list[Path]:
        """Cache files of the embeddings of `images` (files or views), computing the missing ones."""
        bar = ProgressBar("embeddings", len(images), enabled=progress)
        out: list[Path] = []
        try:
            for image in images:
                out.append(self.ensure(load_image(image)))
                bar.advance(postfix=f"hits {self.hits} computed {self.misses}")
        finally:
            bar.close()
        return out

    def load_all(self, paths: Sequence[ImageRef | str | Path], progress: bool = True) -> torch.Tensor:
        """Embeddings of the image files or views `paths`, computing the missing ones.

        Returns:
            N x C x h x w float16 tensor (CPU), in the order of `paths`.
        """
        bar = ProgressBar("embeddings", len(paths), enabled=progress)
        out: torch.Tensor | None = None
        try:
            for index, path in enumerate(paths):
                embedding = torch.from_numpy(self.get(load_image(path)))
                if out is None:
                    out = torch.empty((len(paths), *embedding.shape), dtype=torch.float16)
                out[index] = embedding
                bar.advance(postfix=f"hits {self.hits} computed {self.misses}")
        finally:
            bar.close()
        if out is None:
            raise ValueError("no images to embed")
        return out
