"""The HTTP API over a real server: masks equal Predictor's bit for bit, mask files, sessions kept apart."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from sammed_edge.runtime.io.rle import decode_rle
from sammed_edge.runtime.predictor import Predictor
from sammed_edge.runtime.processing import mask_prompt_from_logits


def _expected(reference: Predictor, image: np.ndarray, previous=None, **prompt):
    """Predictor's candidates for the prompts, best predicted IoU first, as the service ranks them."""
    reference.set_image(image)
    mask_input = None if previous is None else mask_prompt_from_logits(previous, reference.policy)
    masks, iou, low_res = reference.predict(mask_input=mask_input, **prompt)
    order = np.argsort(-iou, kind="stable")
    return masks[order], iou[order], low_res[order]


def _masks(answer: dict) -> tuple[np.ndarray, np.ndarray]:
    return np.stack([decode_rle(m["rle"]) for m in answer["masks"]]), np.array([m["iou"] for m in answer["masks"]])


def test_session_masks_equal_predictor_bit_for_bit(http, reference, images, png_bytes):
    image = images[0]
    created = http.post("/v1/sessions", files={"file": ("phantom.png", png_bytes(image))})
    assert created.status_code == 201, created.text
    session = created.json()
    assert (session["height"], session["width"]) == image.shape[:2] and session["encode_ms"] > 0
    assert len(session["session"]) >= 20
    sid = session["session"]

    # one click, three candidates
    answer = http.post(f"/v1/sessions/{sid}/predict", json={"points": [[40, 30]], "labels": [1], "multimask": True})
    assert answer.status_code == 200, answer.text
    masks, ious = _masks(answer.json())
    want, want_iou, want_low = _expected(reference, image, point_coords=np.array([[40, 30]]), point_labels=np.array([1]),
                                         multimask_output=True)
    assert masks.shape == want.shape and masks.shape[0] == 3
    assert np.array_equal(masks, want) and np.array_equal(ious.astype(np.float32), want_iou)
    assert list(ious) == sorted(ious, reverse=True)
    assert "decode" in answer.json()["timings_ms"]

    # a box and a background click, fed the previous best mask back
    body = {"points": [[40, 30], [10, 70]], "labels": [1, 0], "box": [20, 10, 70, 60], "use_previous_mask": True}
    answer = http.post(f"/v1/sessions/{sid}/predict", json=body)
    assert answer.status_code == 200, answer.text
    masks, ious = _masks(answer.json())
    want, want_iou, _ = _expected(reference, image, previous=want_low[0], point_coords=np.array(body["points"]),
                                  point_labels=np.array(body["labels"]), box=np.array(body["box"]), multimask_output=False)
    assert masks.shape[0] == 1 and np.array_equal(masks, want) and np.float32(ious[0]) == want_iou[0]

    # the last mask as a PNG, written by the runtime's writer
    png = http.get(f"/v1/sessions/{sid}/mask", params={"format": "png"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    import cv2

    stored = cv2.imdecode(np.frombuffer(png.content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(stored > 0, want[0])

    assert http.delete(f"/v1/sessions/{sid}").status_code == 204
    gone = http.post(f"/v1/sessions/{sid}/predict", json={"points": [[40, 30]], "labels": [1]})
    assert gone.status_code == 404 and "deleted" in gone.json()["error"]


def test_dicom_upload_with_window_and_its_mask_files(http, reference):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    from sammed_edge.runtime.io.loading import load_for_segmentation

    path = get_testdata_file("CT_small.dcm", download=False)
    if path is None:
        pytest.skip("pydicom's CT_small.dcm test file is not installed")
    data = open(path, "rb").read()
    created = http.post("/v1/sessions", files={"file": ("ct.dcm", data)}, data={"window": "abdomen"})
    assert created.status_code == 201, created.text
    sid = created.json()["session"]
    box = [30, 30, 100, 100]
    answer = http.post(f"/v1/sessions/{sid}/predict", json={"box": box})
    assert answer.status_code == 200, answer.text
    image = load_for_segmentation(path, window="abdomen").image
    want, _, _ = _expected(reference, image, box=np.array(box), multimask_output=False)
    assert np.array_equal(_masks(answer.json())[0], want)

    nifti = http.get(f"/v1/sessions/{sid}/mask", params={"format": "nifti"})
    assert nifti.status_code == 200 and nifti.content[:2] == b"\x1f\x8b"  # gzip-compressed NIfTI
    if pytest.importorskip("highdicom", reason="DICOM-SEG needs highdicom"):
        seg = http.get(f"/v1/sessions/{sid}/mask", params={"format": "dicom-seg"})
        assert seg.status_code == 200, seg.text
        import io

        dataset = pydicom.dcmread(io.BytesIO(seg.content))
        assert dataset.Modality == "SEG"
    del pydicom


def test_nifti_upload_reads_the_requested_slice(http, reference, tmp_path):
    nib = pytest.importorskip("nibabel")
    from sammed_edge.runtime.io.loading import load_for_segmentation

    rng = np.random.default_rng(0)
    volume = rng.normal(0, 50, (64, 80, 6)).astype(np.float32)
    volume[20:40, 30:60, :] += 400
    path = tmp_path / "volume.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.eye(4)), path)
    created = http.post("/v1/sessions", files={"file": ("volume.nii.gz", path.read_bytes())},
                        data={"slice": "3", "axis": "2"})
    assert created.status_code == 201, created.text
    sid = created.json()["session"]
    loaded = load_for_segmentation(path, index=3, axis=2)
    assert (created.json()["height"], created.json()["width"]) == loaded.image.shape[:2]
    answer = http.post(f"/v1/sessions/{sid}/predict", json={"points": [[45, 30]], "labels": [1]})
    want, _, _ = _expected(reference, loaded.image, point_coords=np.array([[45, 30]]), point_labels=np.array([1]),
                           multimask_output=False)
    assert np.array_equal(_masks(answer.json())[0], want)
    labels = http.get(f"/v1/sessions/{sid}/mask", params={"format": "nifti"})
    assert labels.status_code == 200
    written = tmp_path / "labels.nii.gz"
    written.write_bytes(labels.content)
    stored = np.asarray(nib.load(written).dataobj)
    assert stored.shape == volume.shape and stored[:, :, 3].T.astype(bool).tolist() == want[0].tolist()
    assert not stored[:, :, 2].any()


def test_concurrent_sessions_never_see_each_other(start_server, reference, images, png_bytes):
    """Clicks of three sessions in parallel threads: each answer is its own image's mask."""
    import httpx

    url = start_server()
    expected = [_expected(reference, image, point_coords=np.array([[44, 30]]), point_labels=np.array([1]),
                          multimask_output=False)[0] for image in images]
    with httpx.Client(base_url=url, timeout=60) as http:
        sessions = [http.post("/v1/sessions", files={"file": (f"{i}.png", png_bytes(image))}).json()["session"]
                    for i, image in enumerate(images)]
    failures: list[str] = []

    def clicks(index: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            for _ in range(6):
                answer = http.post(f"/v1/sessions/{sessions[index]}/predict", json={"points": [[44, 30]], "labels": [1]})
                if answer.status_code != 200 or not np.array_equal(_masks(answer.json())[0], expected[index]):
                    failures.append(f"session {index}: {answer.status_code}")

    threads = [threading.Thread(target=clicks, args=(i,)) for i in range(len(images))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures and not any(np.array_equal(expected[0], e) for e in expected[1:])


def test_openapi_schema_is_published(http):
    schema = http.get("/v1/openapi.json").json()
    assert {"/v1/sessions", "/v1/sessions/{session_id}/predict", "/v1/sessions/{session_id}/mask",
            "/v1/sessions/{session_id}"} <= set(schema["paths"])
    assert schema["info"]["version"] == "1"
    assert "PredictRequest" in schema["components"]["schemas"]
