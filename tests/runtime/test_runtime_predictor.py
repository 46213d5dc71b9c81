"""The runtime Predictor: bundle integrity, embedding cache, thread safety, and fuzzed prompts."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sammed_edge.runtime import InputError, Predictor
from sammed_edge.runtime.bundle import BundleError


@pytest.fixture(scope="module")
def predictor(tiny_bundle):
    return Predictor.from_bundle(tiny_bundle, threads=1)


def copy_bundle(tiny_bundle, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(tiny_bundle, target)
    return target


def test_tampered_artifact_is_refused(tiny_bundle, tmp_path):
    bundle = copy_bundle(tiny_bundle, tmp_path)
    data = bytearray((bundle / "decoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle / "decoder.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"decoder\.onnx does not match the manifest"):
        Predictor.from_bundle(bundle)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(schema_version=99), "schema version 99 is not supported"),
        (lambda m: m.update(schema="something-else"), "not a sammed-edge-bundle manifest"),
        (lambda m: m.pop("processing"), r"lacks \['processing'\]"),
        (lambda m: m["graphs"]["encoder"].update(file="../encoder.onnx"), "plain file name"),
        (lambda m: m["processing"].update(resize="crop"), "malformed"),
    ],
)
def test_wrong_schema_is_refused(tiny_bundle, tmp_path, edit, message):
    bundle = copy_bundle(tiny_bundle, tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    edit(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message):
        Predictor.from_bundle(bundle)


def test_missing_pieces_are_refused(tiny_bundle, tmp_path):
    with pytest.raises(BundleError, match="no manifest.json"):
        Predictor.from_bundle(tmp_path)
    bundle = copy_bundle(tiny_bundle, tmp_path)
    (bundle / "encoder.onnx").unlink()
    with pytest.raises(BundleError, match="missing"):
        Predictor.from_bundle(bundle)
    (bundle / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Predictor.from_bundle(bundle)


def test_cache_avoids_reencoding(tiny_bundle):
    predictor = Predictor.from_bundle(tiny_bundle, cache_size=2)
    calls = []
    real_run = predictor.encoder.run
    predictor.encoder.run = lambda feeds: calls.append(1) or real_run(feeds)  # counts real encoder runs
    rng = np.random.default_rng(0)
    slices = [rng.integers(0, 256, (70, 90), dtype=np.uint8) for _ in range(3)]
    predictor.set_image(slices[0])
    predictor.set_image(slices[1])
    predictor.set_image(slices[0].copy())  # same content, new array: a hit
    assert len(calls) == 2 and predictor.cache_hits == 1
    first = predictor.predict(point_coords=[[30, 30]], point_labels=[1])
    predictor.set_image(slices[2])  # evicts slices[1] (least recently used)
    predictor.set_image(slices[0])
    assert len(calls) == 3
    np.testing.assert_array_equal(predictor.predict(point_coords=[[30, 30]], point_labels=[1])[0], first[0])
    predictor.set_image(slices[1])
    assert len(calls) == 4


@pytest.mark.parametrize("trim_heap", [True, False])
def test_heap_is_trimmed_after_each_encode_only_spy(tiny_bundle, monkeypatch, trim_heap):
    # a spy on the trim call (the trim itself is tested in test_heap.py): once per real encode, never on a cache hit
    import sammed_edge.runtime.predictor as predictor_module

    trims = []
    monkeypatch.setattr(predictor_module, "release_free_heap", lambda: trims.append(1) or True)
    predictor = Predictor.from_bundle(tiny_bundle, trim_heap=trim_heap)
    rng = np.random.default_rng(1)
    first, second = (rng.integers(0, 256, (60, 80, 3), dtype=np.uint8) for _ in range(2))
    predictor.set_image(first)
    predictor.set_image(first.copy())
    predictor.set_image(second)
    assert predictor.cache_misses == 2 and predictor.cache_hits == 1
    assert len(trims) == (2 if trim_heap else 0)


def test_concurrent_predict_matches_serial(predictor):
    """8 threads x 200 predict calls on one Predictor give the serial results."""
    image = np.random.default_rng(1).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    predictor.set_image(image)
    rng = np.random.default_rng(2)
    prompts = []
    for i in range(200):
        n = 1 + i % 4
        prompts.append(dict(point_coords=rng.uniform(0, [128, 96], (n, 2)), point_labels=rng.integers(0, 2, n),
                            box=None if i % 3 else [4, 4, 100, 80], multimask_output=bool(i % 2)))
    serial = [predictor.predict(**p) for p in prompts]
    errors: list[BaseException] = []
    mismatches: list[tuple[int, int]] = []

    def worker(thread: int) -> None:
        try:
            order = np.random.default_rng(thread).permutation(len(prompts))
            for i in order:
                masks, iou, low = predictor.predict(**prompts[i])
                if not (np.array_equal(masks, serial[i][0]) and np.array_equal(iou, serial[i][1]) and np.array_equal(low, serial[i][2])):
                    mismatches.append((thread, int(i)))
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[0]
    assert not mismatches, f"{len(mismatches)} of 1600 concurrent calls differ from serial, e.g. {mismatches[:3]}"


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
anything = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**9, 10**9))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    n=st.integers(0, 5),
    coords=st.lists(st.lists(anything, min_size=1, max_size=3), min_size=0, max_size=5),
    labels=st.lists(st.one_of(st.integers(-3, 4), st.floats(allow_nan=True)), max_size=6),
    box=st.one_of(st.none(), st.lists(anything, min_size=0, max_size=6)),
    mask_side=st.sampled_from([None, 16, 17, 64]),
    multimask=st.booleans(),
)
def test_fuzzed_prompts_never_crash_or_mislead(predictor, n, coords, labels, box, mask_side, multimask):
    predictor.set_image(np.full((50, 70, 3), 120, dtype=np.uint8))
    point_coords = coords if n else None
    point_labels = labels if n else None
    mask = None if mask_side is None else np.zeros((mask_side, mask_side), dtype=np.float32)
    try:
        masks, iou, low = predictor.predict(point_coords, point_labels, box, mask, multimask_output=multimask)
    except InputError:
        return
    # accepted input: the answer must be well-formed and self-consistent
    count = 3 if multimask else 1
    assert masks.shape == (count, 50, 70) and masks.dtype == bool
    assert iou.shape == (count,) and np.isfinite(iou).all() and np.isfinite(low).all()
    logits, _, _ = predictor.predict(point_coords, point_labels, box, mask, multimask_output=multimask, return_logits=True)
    np.testing.assert_array_equal(masks, logits > 0)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=st.lists(st.integers(0, 40), min_size=0, max_size=4),
    dtype=st.sampled_from([np.uint8, np.uint16, np.float32, np.float64, np.int8, bool]),
)
def test_fuzzed_images_are_accepted_or_refused(predictor, shape, dtype):
    image = np.zeros(shape, dtype=dtype)
    try:
        predictor.set_image(image)
    except InputError:
        return
    assert dtype == np.uint8 and len(shape) in (2, 3) and min(shape[:2]) > 0
    masks, _, _ = predictor.predict(box=[0, 0, shape[1], shape[0]])
    assert masks.shape[1:] == tuple(shape[:2])


def test_onnxruntime_provider_choice():
    from sammed_edge.runtime.backends import BackendError
    from sammed_edge.runtime.backends.onnxruntime import execution_providers

    cpu_only, with_cuda = ["CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert execution_providers("auto", cpu_only) == execution_providers("cpu", with_cuda) == ["CPUExecutionProvider"]
    # fp32 graphs compute in fp32 on the GPU unless TF32 is asked for
    assert execution_providers("auto", with_cuda) == [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
    assert execution_providers("cuda", with_cuda, tf32=True)[0] == ("CUDAExecutionProvider", {"use_tf32": "1"})
    with pytest.raises(BackendError, match="no CUDA provider"):
        execution_providers("cuda", cpu_only)
    with pytest.raises(BackendError, match="unknown device"):
        execution_providers("gpu", with_cuda)


def test_cpu_session_records_its_options(tiny_bundle):
    predictor = Predictor.from_bundle(tiny_bundle, device="cpu", tf32=True)
    described = predictor.encoder.describe()
    assert described["providers"] == ["CPUExecutionProvider"] and described["device"] == "cpu" and described["tf32"] is True


def test_encoder_threads_do_not_spin_after_a_run(tiny_bundle):
    """The runtime's encoder session lets its workers sleep after a run (the next click would compete with them);
    the decoder keeps onnxruntime's spinning, and an option turns it off or on per graph."""
    predictor = Predictor.from_bundle(tiny_bundle, device="cpu")
    entry = "session.intra_op.allow_spinning"
    assert predictor.encoder.session.get_session_options().get_session_config_entry(entry) == "0"
    assert predictor.decoder.session.get_session_options().get_session_config_entry(entry) == "1"
    assert predictor.encoder.describe()["spinning"] is False and predictor.decoder.describe()["spinning"] is True
    chosen = Predictor.from_bundle(tiny_bundle, device="cpu", encoder_options={"spinning": True}, decoder_options={"spinning": False})
    assert chosen.encoder.session.get_session_options().get_session_config_entry(entry) == "1"
    assert chosen.decoder.session.get_session_options().get_session_config_entry(entry) == "0"
