"""The factored decoder graph computes what the model's own decoder computes, in PyTorch and once exported."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sammed_edge.export import graphs
from sammed_edge.export.factored_decoder import FactoredDecoderGraph, image_to_token, token_to_image
from sammed_edge.export.models.transformer import Attention
from sammed_edge.runtime.samples import phantom


def _attention(seed: int, heads: int = 8, channels: int = 32, downsample: int = 2) -> Attention:
    generator = torch.Generator().manual_seed(seed)
    attn = Attention(channels, heads, downsample)
    with torch.no_grad():
        for param in attn.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return attn.eval()


@pytest.mark.parametrize("tokens", [1, 7, 40])
def test_token_to_image_equals_attention(tokens):
    attn = _attention(tokens)
    generator = torch.Generator().manual_seed(1)
    queries, keys, values = (torch.randn(n, 32, generator=generator) for n in (tokens, 50, 50))
    with torch.no_grad():
        want = attn(queries[None], keys[None], values[None])[0]
        got = token_to_image(attn, queries, keys, values)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tokens", [1, 7, 40])
def test_image_to_token_equals_attention(tokens):
    attn = _attention(tokens + 100)
    generator = torch.Generator().manual_seed(2)
    queries, keys, values = (torch.randn(n, 32, generator=generator) for n in (50, tokens, tokens))
    with torch.no_grad():
        want = attn(queries[None], keys[None], values[None])[0]
        got = image_to_token(attn, queries, keys, values)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _prompt_sets(model, seed: int = 0):
    """(point_coords, point_labels, mask_input, has_mask_input) in the model-input frame: a box, clicks with and
    without a mask prompt, and more prompt tokens than the factored form's break-even."""
    rng = np.random.default_rng(seed)
    size = model.image_size
    low = model.low_res_size
    sets = []
    for points, box, has_mask in ((0, True, 0.0), (1, False, 0.0), (3, False, 1.0), (2, True, 1.0), (14, False, 1.0)):
        coords = [rng.uniform(0, size, (points, 2))]
        labels = [np.arange(points) % 2]
        if box:
            coords.append(np.array([[0.2, 0.3], [0.7, 0.8]]) * size)
            labels.append(np.array([2, 3]))
        else:
            coords.append(np.zeros((1, 2)))
            labels.append(np.array([-1]))
        sets.append((torch.tensor(np.concatenate(coords)[None], dtype=torch.float32),
                     torch.tensor(np.concatenate(labels)[None], dtype=torch.float32),
                     torch.tensor(rng.normal(0, 3, (1, 1, low, low)), dtype=torch.float32),
                     torch.tensor([has_mask])))
    return sets


def _same_outputs(model, embedding: torch.Tensor) -> None:
    plain, factored = graphs.DecoderGraph(model).eval(), FactoredDecoderGraph(model).eval()
    for prompts in _prompt_sets(model):
        with torch.no_grad():
            want_iou, want_masks = plain(embedding, *prompts)
            got_iou, got_masks = factored(embedding, *prompts)
        assert got_masks.shape == want_masks.shape and got_iou.shape == want_iou.shape
        scale = float(want_masks.abs().max())
        torch.testing.assert_close(got_masks, want_masks, rtol=0, atol=1e-5 * scale)
        torch.testing.assert_close(got_iou, want_iou, rtol=1e-5, atol=1e-5)


def test_same_outputs_tiny_sam_med2d(tiny_model):
    generator = torch.Generator().manual_seed(3)
    grid = tiny_model.prompt_encoder.image_embedding_size
    _same_outputs(tiny_model, torch.randn(1, tiny_model.prompt_encoder.embed_dim, *grid, generator=generator))


def test_same_outputs_lite_medsam_released_weights(lite_medsam_model):
    image = phantom(256, seed=4)[0]
    from sammed_edge.runtime import processing

    tensor, _ = processing.preprocess_image(image, lite_medsam_model.processing_policy())
    with torch.no_grad():
        embedding = lite_medsam_model.encode(torch.from_numpy(tensor))
    _same_outputs(lite_medsam_model, embedding)


@pytest.mark.parametrize("softmax", graphs.SOFTMAX_PLACEMENTS)
@pytest.mark.parametrize("layout", graphs.EMBEDDING_LAYOUTS)
@pytest.mark.parametrize("form", graphs.DECODER_FORMS)
def test_exported_forms_verify_in_onnxruntime(tiny_model, tmp_path, form, layout, softmax):
    if form == "sam" and softmax != graphs.DEFAULT_SOFTMAX:
        pytest.skip("the placement applies to the factored form only")
    path = graphs.export_decoder(tiny_model, tmp_path / f"{form}.onnx", form=form, layout=layout, softmax=softmax)
    graphs.slim(path)
    images = [phantom(90 + 30 * i, seed=i)[0] for i in range(2)]
    report = graphs.verify_decoder(tiny_model, path, images, layout=layout)
    assert report["prompt_sets"] == 10 and report["mask_pixels_flipped"] == 0


def test_tokens_layout_decoder_reads_the_embedding_without_a_transpose(lite_medsam_model, tmp_path):
    """In the tokens layout the decoder reads the 1 x N x C embedding as it comes. Its only C x N-sized transpose is
    the mask prompt's last convolution switching to tokens right after the convolution (OpenVINO folds that into
    the convolution's channels-last output); the nchw layout transposes the embedding-plus-prompt sum, which cost
    1.7 ms of an OpenVINO click (docs/exporters.md#embedding-layout). The N x C -> C x N ones that feed products
    as their second operand exist in both layouts."""
    import onnx
    from onnx import shape_inference

    channels, grid = 256, 64 * 64
    sources = {}
    for layout in graphs.EMBEDDING_LAYOUTS:
        path = graphs.export_decoder(lite_medsam_model, tmp_path / f"{layout}.onnx", layout=layout)
        graphs.slim(path)
        model = shape_inference.infer_shapes(onnx.load(str(path)))
        shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.value_info}
        producer = {out: node.op_type for node in model.graph.node for out in node.output}
        sources[layout] = [producer.get(n.input[0]) for n in model.graph.node if n.op_type == "Transpose"
                           and shapes.get(n.input[0]) in ([channels, grid], [1, channels, 64, 64], [1, channels, grid])]
    assert sources["nchw"] and "Conv" not in sources["nchw"], sources
    assert sources["tokens"] == ["Conv"], sources


def test_unknown_layout_is_refused(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="unknown embedding layout 'nhwc'"):
        graphs.export_decoder(tiny_model, tmp_path / "x.onnx", layout="nhwc")
    with pytest.raises(ValueError, match="unknown softmax placement 'late'"):
        graphs.export_decoder(tiny_model, tmp_path / "x.onnx", softmax="late")


def test_softmax_after_leaves_only_the_image_to_token_softmaxes(lite_medsam_model, tmp_path):
    """With the token -> image softmaxes normalised after their products, the graph keeps a Softmax only in the two
    image -> token attentions (and in the prompt tokens' self-attentions), so OpenVINO finds no
    product-softmax-product over the image tokens to fuse."""
    import onnx

    counts = {}
    for place in graphs.SOFTMAX_PLACEMENTS:
        path = graphs.export_decoder(lite_medsam_model, tmp_path / f"{place}.onnx", softmax=place)
        graphs.slim(path)
        counts[place] = sum(node.op_type == "Softmax" for node in onnx.load(str(path)).graph.node)
    token_to_image = 2 + 1  # two layers and the final attention
    assert counts["inside"] - counts["after"] == token_to_image, counts


def test_unknown_form_is_refused(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="unknown decoder form 'fast'"):
        graphs.export_decoder(tiny_model, tmp_path / "x.onnx", form="fast")


def test_positional_grid_is_stored_once(lite_medsam_model, tmp_path):
    """Every layer reads one N x C positional-encoding initializer: a per-use copy (4 MiB each on LiteMedSAM's
    64 x 64 grid) would grow the graph and the runtime's memory."""
    import onnx
    from onnx import numpy_helper

    path = graphs.export_decoder(lite_medsam_model, tmp_path / "factored.onnx")
    graphs.slim(path)
    grid = FactoredDecoderGraph(lite_medsam_model).key_pe.numpy()
    model = onnx.load(str(path))
    copies = [init.name for init in model.graph.initializer
              if tuple(init.dims) == grid.shape and np.array_equal(numpy_helper.to_array(init), grid)]
    assert len(copies) == 1, copies
