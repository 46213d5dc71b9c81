"""SAM's predictor interface (`set_image`, `predict`) over any image encoder and prompt decoder.

`PromptPredictor` owns everything between the user's arrays and the two networks: validation, preprocessing,
prompt transforms, candidate selection and mask post-processing, all through `processing`. A concrete predictor
only says how to run the encoder and the decoder (`_encode`, `_decode`), so the PyTorch reference predictor and
the runtime's `Predictor` return the same masks for the same network.

`Predictor` runs a bundle on a backend, keeps recent image embeddings in an LRU cache keyed by image content (so
going back to a slice does not re-encode it), and allows concurrent `predict` calls from several threads.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from . import processing, zoom
from .backends import Backend, load_backend
from .bundle import Bundle, load_bundle
from .contract import ENCODER_INPUT, ENCODER_OUTPUT
from .errors import InputError
from .heap import release_free_heap
from .processing import ImageGeometry, ProcessingPolicy


# zoom windows of one image whose embeddings the predictor keeps (an object's clicks reuse its window)
WINDOWS_PER_IMAGE = 4


class PromptPredictor:
    """Base predictor: subclasses implement `_encode` and `_decode`.

    Args:
        policy: the model family's processing policy.
    """

    def __init__(self, policy: ProcessingPolicy) -> None:
        self.policy = policy
        # (embedding, geometry, image, zoom windows) of the current image, replaced as a whole so readers see a
        # consistent set; the windows dict holds the current image's zoomed crops: window -> (embedding, geometry)
        self._state: tuple[Any, ImageGeometry, np.ndarray, dict] | None = None
        self._window_lock = threading.Lock()
        self.timings: dict[str, float] = {}

    # -- to implement -------------------------------------------------------------------------------------
    def _encode(self, image_tensor: np.ndarray) -> Any:
        """Run the image encoder on a 1 x 3 x S x S float32 tensor; returns the embedding (any type)."""
        raise NotImplementedError

    def _decode(self, embedding: Any, inputs: dict[str, np.ndarray], multimask_output: bool) -> tuple[np.ndarray, np.ndarray]:
        """Run the prompt decoder.

        Args:
            embedding: what `_encode` returned.
            inputs: `processing.decoder_inputs(...)` (SAM's ONNX decoder inputs, model frame).
            multimask_output: return the multimask candidates (tokens 1..) instead of the single mask (token 0).

        Returns:
            low_res_logits C x L x L float32, iou_predictions (C,) float32.
        """
        raise NotImplementedError

    def _embed(self, image: np.ndarray) -> tuple[Any, ImageGeometry]:
        """Embedding and geometry of a validated H x W x 3 uint8 image (subclasses may cache)."""
        tensor, geometry = processing.preprocess_image(image, self.policy)
        start = time.perf_counter()
        embedding = self._encode(tensor)
        self.timings["encode_ms"] = (time.perf_counter() - start) * 1e3
        return embedding, geometry

    # -- SAM's interface ----------------------------------------------------------------------------------
    @property
    def is_image_set(self) -> bool:
        return self._state is not None

    @property
    def original_size(self) -> tuple[int, int]:
        """(H, W) of the current image."""
        return self._current()[1].original_size

    @property
    def geometry(self) -> ImageGeometry:
        """Where the current image went in the model input."""
        return self._current()[1]

    def _current(self) -> tuple[Any, ImageGeometry]:
        return self._current_state()[:2]

    def _current_state(self) -> tuple[Any, ImageGeometry, np.ndarray, dict]:
        state = self._state
        if state is None:
            raise InputError("no image set: call set_image(image) first")
        return state

    def _window_state(self, state: tuple[Any, ImageGeometry, np.ndarray, dict], window: zoom.Window) -> tuple[Any, ImageGeometry]:
        """Embedding and geometry of a zoom window's crop of the current image, encoded once per image and window."""
        windows = state[3]
        with self._window_lock:
            found = windows.get(window)
            if found is None:
                start = time.perf_counter()
                found = self._embed(zoom.crop(state[2], window))
                self.timings["zoom_encode_ms"] = (time.perf_counter() - start) * 1e3
                while len(windows) >= WINDOWS_PER_IMAGE:
                    windows.pop(next(iter(windows)))
                windows[window] = found
        return found

    def set_image(self, image: np.ndarray) -> None:
        """Encode an image for the following `predict` calls.

        Args:
            image: H x W or H x W x 3 uint8 RGB array.
        """
        rgb = processing.as_rgb_uint8(image)
        self._state = (*self._embed(rgb), rgb, {})

    def reset_image(self) -> None:
        self._state = None

    def preload(self, image: np.ndarray) -> None:
        """Encode an image ahead of its `set_image` (into the embedding cache where there is one), leaving the
        current image as it is; safe to call from a background thread.

        Args:
            image: H x W or H x W x 3 uint8 RGB array.
        """
        self._embed(processing.as_rgb_uint8(image))

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        best_only: bool = False,
        window: tuple[int, int, int, int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Segment the current image from prompts in original-image pixels.

        Args:
            point_coords: N x 2 (x, y) pixel coordinates.
            point_labels: N labels, 1 foreground / 0 background.
            box: (x0, y0, x1, y1) in pixels.
            mask_input: L x L low-res mask prompt (L = policy.low_res_size), e.g. from a previous call's
                `low_res_logits` through `processing.mask_prompt_from_logits`; passed to the model as given.
            multimask_output: return every multimask candidate the decoder emits (3 for SAM's decoder)
                instead of its single-mask output.
            return_logits: return full-resolution float32 logits instead of boolean masks.
            best_only: keep only the candidate with the highest predicted IoU (SAM-Med2D's own predictor).
            window: zoom window (x0, y0, x1, y1) in pixels, exclusive maxima (`zoom.box_window`,
                `zoom.mask_window`): segment that crop of the image at the model's input size, encoded once per
                image and window, and paste its masks back (background outside). Prompts outside it are
                dropped; `mask_input` and the returned `low_res_logits` are in the window's frame.

        Returns:
            masks: C x H x W bool (float32 logits with return_logits).
            iou_predictions: (C,) float32.
            low_res_logits: C x L x L float32.
        """
        state = self._current_state()
        embedding, geometry = state[:2]
        prompts = processing.check_prompts(geometry, self.policy, point_coords, point_labels, box, mask_input)
        frame = geometry
        if window is not None:
            window = zoom.check_window(window, geometry.original_size)
            prompts = zoom.prompts_into(prompts, window)
            embedding, frame = self._window_state(state, window)
        inputs = processing.decoder_inputs(prompts, frame, self.policy)
        start = time.perf_counter()
        low_res, iou = self._decode(embedding, inputs, bool(multimask_output))
        low_res = np.asarray(low_res, dtype=np.float32)
        iou = np.asarray(iou, dtype=np.float32)
        if best_only and low_res.shape[0] > 1:
            best = int(np.argmax(iou))
            low_res, iou = low_res[best : best + 1], iou[best : best + 1]
        if window is None:  # masks thresholded block by block as they are upsampled
            threshold = None if return_logits else self.policy.mask_threshold
            masks = processing.postprocess_logits(low_res, frame, self.policy, threshold=threshold)
        else:
            logits = zoom.paste(processing.postprocess_logits(low_res, frame, self.policy), window, geometry.original_size)
            masks = logits if return_logits else logits > self.policy.mask_threshold
        self.timings["predict_ms"] = (time.perf_counter() - start) * 1e3
        return masks, iou, low_res


# Per-graph backend defaults, chosen by measurement (docs/benchmarks.md). onnxruntime's pre-planned memory pattern
# keeps the encoder's large activations alive across runs (peak RSS of a 6-image session 739 -> 499 MiB without it,
# same speed); shrinking the encoder's arena after each run takes it to 450 MiB for ~15 % slower encodes (pass
# arena_shrinkage=False to trade memory for speed); the decoder needs no arena. The encoder's worker threads do not
# spin after a run: encodes take the same time, and the click right after an encode no longer competes with them
# (18 against 39 ms on 2 cores).
GRAPH_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "onnxruntime": {
        "encoder": {"memory_pattern": False, "arena_shrinkage": True, "spinning": False},
        "decoder": {"memory_arena": False},
    },
}


def image_key(image: np.ndarray) -> bytes:
    """Content key of an image array: a 128-bit BLAKE2 digest of its shape, dtype and bytes."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr((image.shape, image.dtype.str)).encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.digest()


class Predictor(PromptPredictor):
    """Torch-free predictor over a bundle: SAM's `set_image` / `predict` with an embedding cache.

    Each `predict` runs only the decoder. Recent embeddings stay in an LRU cache keyed by image content, so
    `set_image` on an image seen recently (a neighbouring slice of a series, say) returns without encoding.
    `predict` may be called concurrently from several threads; it works on the image current when it starts.

    Use `Predictor.from_bundle(path)`.
    """

    def __init__(self, bundle: Bundle, encoder: Backend, decoder: Backend, cache_size: int = 8, trim_heap: bool = True) -> None:
        super().__init__(bundle.policy)
        if cache_size < 0:
            raise ValueError("cache_size must be >= 0")
        self.trim_heap = trim_heap
        self.bundle = bundle
        self.encoder = encoder
        self.decoder = decoder
        self.cache_size = cache_size
        self._cache: OrderedDict[bytes, tuple[np.ndarray, ImageGeometry]] = OrderedDict()
        self._lock = threading.Lock()
        self.cache_hits = 0
        self.cache_misses = 0
        candidates = bundle.contract("decoder").extra.get("candidates", {})
        self._single = list(candidates.get("single", [0]))
        self._multi = list(candidates.get("multi", [1, 2, 3]))

    @classmethod
    def from_bundle(
        cls,
        path: str | Path,
        backend: str | None = None,
        threads: int | None = None,
        cache_size: int = 8,
        verify: bool = True,
        trim_heap: bool = True,
        encoder_options: dict[str, Any] | None = None,
        decoder_options: dict[str, Any] | None = None,
        **backend_options: Any,
    ) -> "Predictor":
        """Load a bundle and its two graphs.

        Args:
            path: bundle folder.
            backend: backend name (default: the bundle's target backend).
            threads: CPU threads per graph (default: the backend's choice).
            cache_size: embeddings kept (LiteMedSAM: 4 MB each; SAM-Med2D: 256 KB); 0 disables the cache.
            verify: check the bundle's artifact hashes on load.
            trim_heap: after each encode, hand the heap memory it freed back to the OS (`heap.release_free_heap`;
                glibc only, ~0.1 ms): a lower resident size over a session.
            **backend_options: passed to both graphs' backends (e.g. device="cuda"), over `GRAPH_DEFAULTS` and the
                options the bundle records for each graph (e.g. bf16 inference precision).
            encoder_options, decoder_options: options for one graph only (e.g. encoder_options={"arena_shrinkage": False}).

        Raises:
            BundleError: a malformed, unsupported or modified bundle.
            BackendError: the backend is unavailable.
        """
        bundle = load_bundle(path, verify_hashes=verify)
        name = backend or bundle.backend
        graphs = {}
        own = {"encoder": encoder_options or {}, "decoder": decoder_options or {}}
        for graph in ("encoder", "decoder"):
            recorded = bundle.manifest["graphs"][graph].get("runtime_options", {}) if name == bundle.backend else {}
            options = {**GRAPH_DEFAULTS.get(name, {}).get(graph, {}), **recorded, **backend_options, **own[graph]}
            graphs[graph] = load_backend(name, bundle.path(graph), bundle.contract(graph), threads=threads, **options)
        return cls(bundle, graphs["encoder"], graphs["decoder"], cache_size=cache_size, trim_heap=trim_heap)

    def _encode(self, image_tensor: np.ndarray) -> np.ndarray:
        return self.encoder.run({ENCODER_INPUT: image_tensor})[ENCODER_OUTPUT]

    def _decode(self, embedding: np.ndarray, inputs: dict[str, np.ndarray], multimask_output: bool) -> tuple[np.ndarray, np.ndarray]:
        outputs = self.decoder.run({**inputs, "image_embeddings": embedding})
        chosen = self._multi if multimask_output else self._single
        return outputs["low_res_masks"][0, chosen], outputs["iou_predictions"][0, chosen]

    def _embed(self, image: np.ndarray) -> tuple[np.ndarray, ImageGeometry]:
        key = image_key(image)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                self.cache_hits += 1
                self.timings["encode_ms"] = 0.0
                return cached
            self.cache_misses += 1
        state = super()._embed(image)
        if self.trim_heap:
            release_free_heap()
        if self.cache_size:
            with self._lock:
                self._cache[key] = state
                self._cache.move_to_end(key)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return state

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def describe(self) -> dict[str, Any]:
        """Model, target and backend facts, for logs and reports."""
        manifest = self.bundle.manifest
        return {
            "model": manifest["model"].get("name"),
            "family": manifest["model"].get("family"),
            "target": manifest["target"],
            "encoder": self.encoder.describe(),
            "decoder": self.decoder.describe(),
            "cache": {"size": self.cache_size, "entries": len(self._cache), "hits": self.cache_hits, "misses": self.cache_misses},
        }
