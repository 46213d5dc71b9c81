"""Which parts of a model a fine-tuning run trains: names, freezing, and the state of the trained parts.

Parts: the prompt encoder, the mask decoder, SAM-Med2D's encoder adapters, the whole image encoder, or the encoder's
tail (its last stages and neck, trained on cached features of the stages before them; TinyViT encoders).
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..models import SamModel

# CLI names of the trainable parts -> the model attribute (or "adapters": SAM-Med2D's encoder adapters; "encoder_tail":
# the image encoder's stages from a split on, and its neck)
PARTS = {"prompt_encoder": "prompt_encoder", "decoder": "mask_decoder", "mask_decoder": "mask_decoder",
         "adapters": "adapters", "encoder": "image_encoder", "image_encoder": "image_encoder",
         "encoder_tail": "encoder_tail"}
ENCODER_PARTS = ("adapters", "image_encoder", "encoder_tail")


def trainable_parts(names: Sequence[str]) -> tuple[str, ...]:
    """Canonical part names from CLI names ("decoder", "prompt_encoder", "adapters", "encoder"), sorted, unique."""
    unknown = sorted(set(names) - set(PARTS))
    if unknown or not names:
        raise ValueError(f"unknown trainable parts {unknown or list(names)}; choose from {sorted(PARTS)}")
    parts = {PARTS[name] for name in names}
    if "image_encoder" in parts:
        parts -= {"adapters", "encoder_tail"}
    return tuple(sorted(parts))


def set_trainable(model: SamModel, parts: Sequence[str], tail_split: int = 3) -> list[torch.nn.Parameter]:
    """Freeze the model except `parts` (canonical names); returns the trainable parameters.

    Raises:
        ValueError: "adapters" on a model without adapters, "encoder_tail" on an encoder that cannot be split.
    """
    model.requires_grad_(False)
    for part in parts:
        if part == "adapters":
            adapters = [param for name, param in model.image_encoder.named_parameters() if ".Adapter." in f".{name}"]
            if not adapters:
                raise ValueError("the model's image encoder has no adapters to train")
            for param in adapters:
                param.requires_grad_(True)
        elif part == "encoder_tail":
            for module in _tail_modules(model, tail_split):
                module.requires_grad_(True)
        else:
            getattr(model, part).requires_grad_(True)
    return [param for param in model.parameters() if param.requires_grad]


def _tail_modules(model: SamModel, split: int) -> list[torch.nn.Module]:
    encoder = model.image_encoder
    if not hasattr(encoder, "tail_modules"):
        raise ValueError(f"the {type(encoder).__name__} encoder cannot be split into cached and trained stages")
    return encoder.tail_modules(split)


def _prefixes(model: SamModel, parts: Sequence[str], tail_split: int = 3) -> tuple[str, ...]:
    prefixes: list[str] = []
    for part in parts:
        if part == "adapters":
            prefixes.append("image_encoder.")
        elif part == "encoder_tail":
            names = {id(module): name for name, module in model.image_encoder.named_modules()}
            prefixes += [f"image_encoder.{names[id(module)]}." for module in _tail_modules(model, tail_split)]
        else:
            prefixes.append(f"{part}.")
    return tuple(prefixes)


def part_state(model: SamModel, parts: Sequence[str], tail_split: int = 3) -> dict[str, torch.Tensor]:
    """State-dict entries of the modules holding `parts` (CPU copies): what a checkpoint and the weights store."""
    prefixes = _prefixes(model, parts, tail_split)
    return {key: value.detach().cpu().clone() for key, value in model.state_dict().items() if key.startswith(prefixes)}


def load_part_state(model: SamModel, state: dict[str, torch.Tensor], parts: Sequence[str], tail_split: int = 3) -> None:
    """Load `part_state` output back, strictly: exactly the keys and shapes of those modules."""
    expected = {key: value for key, value in model.state_dict().items() if key.startswith(_prefixes(model, parts, tail_split))}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    misshapen = [key for key in expected if key in state and state[key].shape != expected[key].shape]
    if missing or unexpected or misshapen:
        raise ValueError(f"checkpoint does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}, shapes {misshapen[:5]}")
    with torch.no_grad():
        for key, value in expected.items():
            value.copy_(state[key])
