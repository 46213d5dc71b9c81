"""The SAM-Med2D encoder's attention routes through the fused op only where the guard allows it."""

from __future__ import annotations

import pytest
import torch

from sammed_edge.export.models import image_encoder_vit
from sammed_edge.kernels.triton import DISABLE_ENV, relpos_attention_reference
from sammed_edge.kernels.triton.bench import count_fused_calls


def _image(model, batch=1, seed=0):
    size = model.image_encoder.img_size
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_cpu_fp32_never_calls_the_op(tiny_model, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the fused op must not run on CPU fp32")

    monkeypatch.setattr(image_encoder_vit, "relpos_attention", forbidden)
    with torch.no_grad():
        tiny_model.image_encoder(_image(tiny_model))


def test_fused_path_forms_the_same_terms(tiny_model, monkeypatch):
    # the fused branch with the op replaced by the materialising reference: checks the per-axis terms it builds
    image = _image(tiny_model, batch=2)
    with torch.no_grad():
        expected = tiny_model.image_encoder(image)
        monkeypatch.setattr(image_encoder_vit, "relpos_attention_supported", lambda *args: True)
        monkeypatch.setattr(image_encoder_vit, "relpos_attention", relpos_attention_reference)
        got = tiny_model.image_encoder(image)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_encoder_through_the_kernel(kernel_device, tiny_model, monkeypatch):
    # every block (one 196-token window block, one 16-token global block) runs the Triton kernel
    if kernel_device.type != "cpu":
        pytest.skip("the CUDA variant is test_encoder_bf16_on_gpu")
    image = _image(tiny_model)
    encoder = tiny_model.image_encoder
    with torch.no_grad():
        expected = encoder(image)
        monkeypatch.setattr(image_encoder_vit, "relpos_attention_supported", lambda *args: True)
        assert count_fused_calls(encoder, image) == len(encoder.blocks)
        got = encoder(image)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_attention_compiles_without_graph_breaks(tiny_model):
    attn = tiny_model.image_encoder.blocks[1].attn
    x = torch.randn(1, 4, 4, attn.qkv.in_features)
    compiled = torch.compile(attn, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), attn(x))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_encoder_bf16_on_gpu(monkeypatch):
    from sammed_edge.export.models import build_model

    encoder = build_model("sam_med2d_vit_b").image_encoder.to("cuda", torch.bfloat16).eval()
    with torch.no_grad():  # SAM initialises the rel-pos tables to zero, which would hide a wrong bias
        for name, param in encoder.named_parameters():
            if "rel_pos" in name:
                param.normal_(0.0, 0.5)
    image = torch.randn(1, 3, encoder.img_size, encoder.img_size, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        monkeypatch.delenv(DISABLE_ENV, raising=False)
        assert count_fused_calls(encoder, image) == 12
        fused = encoder(image).float()
        monkeypatch.setenv(DISABLE_ENV, "1")
        assert count_fused_calls(encoder, image) == 0
        plain = encoder(image).float()
    assert ((fused - plain).norm() / plain.norm()).item() < 2e-2
