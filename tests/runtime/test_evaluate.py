"""Evaluation: prompts derived from ground truth, the click protocol, aggregation, reports and the shared CLI."""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from sammed_edge.runtime import evaluate as ev
from sammed_edge.runtime import metrics
from sammed_edge.runtime.io import default_data_root, read_dataset
from sammed_edge.runtime.predictor import PromptPredictor
from sammed_edge.runtime.processing import family_policy

POLICY = family_policy("sam_med2d")


# ------------------------------------------------------------------------------------------------ helpers


def rect(shape: tuple[int, int], rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """Boolean mask with rows[0]..rows[1] x cols[0]..cols[1] (inclusive) set."""
    mask = np.zeros(shape, dtype=bool)
    mask[rows[0] : rows[1] + 1, cols[0] : cols[1] + 1] = True
    return mask


def write_dataset(root: Path, entries: list[dict]) -> Path:
    """A dataset in SAM-Med2D's layout: entries of {image, mask, pixels, truth, modality, source}."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    mapping = {}
    for entry in entries:
        image_path = root / "images" / entry["image"]
        if not image_path.exists():
            assert cv2.imwrite(str(image_path), entry["pixels"])
        assert cv2.imwrite(str(root / "masks" / entry["mask"]), entry["truth"].astype(np.uint8) * 255)
        mapping[f"masks/{entry['mask']}"] = f"images/{entry['image']}"
    (root / "label2image.json").write_text(json.dumps(mapping, indent=1))
    with (root / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "mask", "modality", "source_dataset", "class"])
        for entry in entries:
            writer.writerow([f"images/{entry['image']}", f"masks/{entry['mask']}", entry["modality"], entry["source"], "organ"])
    return root


def shifted(mask: np.ndarray, dx: int) -> np.ndarray:
    out = np.zeros_like(mask)
    out[:, dx:] = mask[:, : mask.shape[1] - dx]
    return out


class ShiftOracle(PromptPredictor):
    """Returns the ground truth of the current image shifted right by `dx` pixels, whatever the prompt.

    Each test image has one mask and a distinct constant grey level that indexes `truths`.
    """

    def __init__(self, truths: dict[int, np.ndarray], dx: int) -> None:
        super().__init__(POLICY)
        self.truths, self.dx = truths, dx
        self.images = 0
        self.calls: list[dict] = []

    def set_image(self, image: np.ndarray) -> None:
        self.images += 1
        self.truth = self.truths[int(image[0, 0, 0])]

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=True,
                return_logits=False, best_only=False):
        self.calls.append(dict(point_coords=point_coords, point_labels=point_labels, box=box, mask_input=mask_input,
                               multimask_output=multimask_output, best_only=best_only))
        side = self.policy.low_res_size
        return shifted(self.truth, self.dx)[None], np.ones(1, np.float32), np.zeros((1, side, side), np.float32)


class ScriptedPredictor(PromptPredictor):
    """Returns the given masks in turn; call k's low-res logits are all k (1-based), to trace the mask prompt."""

    def __init__(self, responses: list[np.ndarray]) -> None:
        super().__init__(POLICY)
        self.responses = responses
        self.calls: list[dict] = []

    def set_image(self, image: np.ndarray) -> None:
        pass

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=True,
                return_logits=False, best_only=False):
        self.calls.append(dict(point_coords=None if point_coords is None else np.asarray(point_coords).tolist(),
                               point_labels=None if point_labels is None else np.asarray(point_labels).tolist(),
                               mask_input=mask_input, multimask_output=multimask_output, best_only=best_only))
        mask = self.responses[len(self.calls) - 1]
        side = self.policy.low_res_size
        return mask[None], np.ones(1, np.float32), np.full((1, side, side), float(len(self.calls)), np.float32)


# Three images with one mask each: Dice under a right shift of 2 px is (w - 2) / w for a w-wide rectangle.
SHAPE = (40, 60)
ORACLE_ENTRIES = [
    dict(image="ct_a.png", mask="ct_a_liver.png", level=10, truth=rect(SHAPE, (10, 19), (10, 29)), modality="CT", source="S1"),  # 0.9
    dict(image="ct_b.png", mask="ct_b_liver.png", level=20, truth=rect(SHAPE, (5, 14), (30, 39)), modality="CT", source="S2"),  # 0.8
    dict(image="mr_c.png", mask="mr_c_tumour.png", level=30, truth=rect(SHAPE, (20, 27), (5, 12)), modality="MR", source="S2"),  # 0.75
]


@pytest.fixture
def oracle_data(tmp_path):
    entries = [dict(entry, pixels=np.full(SHAPE, entry["level"], np.uint8)) for entry in ORACLE_ENTRIES]
    root = write_dataset(tmp_path / "data", entries)
    truths = {entry["level"]: entry["truth"] for entry in ORACLE_ENTRIES}
    return root, truths


@pytest.fixture(scope="module")
def tiny_predictor():
    torch = pytest.importorskip("torch")
    from sammed_edge.export.models import build_model
    from sammed_edge.export.predictor import TorchPredictor

    torch.manual_seed(0)
    model = build_model("sam_med2d_vit_b", embed_dim=64, depth=2, num_heads=2, global_attn_indexes=[1], img_size=64, out_chans=32)
    return TorchPredictor(model)


@pytest.fixture
def textured_data(tmp_path):
    """Two textured images, one with two masks (one of them empty), for the real model."""
    rng = np.random.default_rng(1)
    entries = []
    for name, count in (("a.png", 2), ("b.png", 1)):
        pixels = rng.integers(0, 255, (48, 56, 3), dtype=np.uint8)
        for index in range(count):
            truth = rect((48, 56), (8 + 10 * index, 20 + 10 * index), (6 + 12 * index, 30 + 12 * index))
            entries.append(dict(image=name, mask=f"{name[:-4]}_{index}.png", pixels=pixels, truth=truth,
                                modality="CT" if name == "a.png" else "X-ray", source="demo"))
    entries.append(dict(image="b.png", mask="b_empty.png", pixels=None, truth=np.zeros((48, 56), bool), modality="X-ray", source="demo"))
    return write_dataset(tmp_path / "textured", entries)


# ----------------------------------------------------------------------------------------- prompt helpers


def test_interior_point_is_the_distance_transform_maximum_first_in_row_major_order():
    # 11 x 21 rectangle: the distance to the outside is 6 on row 15 for columns 10..20; the first of those wins
    mask = rect((30, 40), (10, 20), (5, 25))
    assert metrics.interior_point(mask) == (10, 15)


def test_interior_point_treats_the_image_border_as_background():
    # a band on the left edge: with the border as background the centre is 5 px from both sides at (4, 4);
    # without the padding the transform would grow towards the edge and pick column 0
    mask = np.zeros((20, 30), bool)
    mask[:, :9] = True
    assert metrics.interior_point(mask) == (4, 4)
    with pytest.raises(ValueError):
        metrics.interior_point(np.zeros((5, 5), bool))


def test_next_click_picks_the_largest_error_component():
    truth = rect((40, 60), (0, 39), (0, 29))
    pred = truth.copy()
    pred[2:4, 2:4] = False  # miss of 4 px
    pred[10:14, 10:14] = False  # miss of 16 px: the largest component
    pred[20:23, 40:43] = True  # false positive of 9 px
    pred[30:33, 50:53] = True  # false positive of 9 px: 18 px of false positives, but no larger component
    assert metrics.next_click(pred, truth) == (11, 11, 1)
    pred[0:5, 34:39] = True  # false positive of 25 px now wins
    assert metrics.next_click(pred, truth) == (36, 2, 0)
    assert metrics.next_click(truth, truth) is None


def test_next_click_tie_goes_to_the_miss():
    truth = rect((20, 20), (2, 6), (2, 6))
    pred = shifted(truth, 5)  # a 25 px miss and a 25 px false positive
    assert metrics.next_click(pred, truth) == (4, 4, 1)


def test_curve_auc_is_the_normalised_trapezoid():
    assert metrics.curve_auc([0.5, 0.8, 1.0, 1.0, 1.0]) == pytest.approx((0.65 + 0.9 + 1.0 + 1.0) / 4)
    assert metrics.curve_auc([0.7]) == pytest.approx(0.7)
    assert metrics.curve_auc([0.2, 0.6]) == pytest.approx(0.4)


def test_sample_points_follow_test_py_proportions():
    truth = rect((40, 60), (10, 19), (10, 29))
    for count, foreground in ((1, 1), (3, 1), (5, 2)):
        coords, labels = metrics.sample_points(truth, count, np.random.default_rng(0))
        assert coords.shape == (count, 2) and labels.tolist().count(1) == foreground
        assert np.array_equal(coords, np.round(coords))
        inside = truth[coords[:, 1].astype(int), coords[:, 0].astype(int)]
        assert np.array_equal(inside, labels == 1)
    coords, labels = metrics.sample_points(np.zeros((5, 5), bool), 1, np.random.default_rng(0))
    assert labels.tolist() == [0]
    coords, labels = metrics.sample_points(np.ones((5, 5), bool), 3, np.random.default_rng(0))
    assert labels.tolist() == [1, 1, 1]


# -------------------------------------------------------------------------------------------- evaluation


def test_oracle_dice_prompts_and_aggregation(oracle_data):
    root, truths = oracle_data
    predictor = ShiftOracle(truths, dx=2)
    result = ev.evaluate(predictor, read_dataset(root), num_clicks=3, progress=False, label="oracle")
    assert predictor.images == 3
    records = {record["mask"]: record for record in result["items"]}
    assert list(records) == ["masks/ct_a_liver.png", "masks/ct_b_liver.png", "masks/mr_c_tumour.png"]
    expected = {"masks/ct_a_liver.png": 0.9, "masks/ct_b_liver.png": 0.8, "masks/mr_c_tumour.png": 0.75}
    for key, value in expected.items():
        assert records[key]["image"] == key.replace("masks/", "images/").rsplit("_", 1)[0] + ".png"
        assert records[key]["dice"] == {mode: value for mode in ev.MODES}
        assert records[key]["clicks"]["dice"] == [value] * 3 and records[key]["clicks"]["auc"] == value

    # prompts: the whole-mask box, then 1, 3, 5 points, then the clicks (the first item's calls)
    box, p1, p3, p5, *clicks = predictor.calls[:7]
    np.testing.assert_array_equal(box["box"], metrics.box_from_mask(truths[10]))
    assert box["multimask_output"] is False
    for call, count in ((p1, 1), (p3, 3), (p5, 5)):
        assert call["multimask_output"] is True and call["best_only"] is True
        labels = np.asarray(call["point_labels"])
        assert len(labels) == count and (labels == 1).sum() == max(1, count // 2)
        coords = np.asarray(call["point_coords"]).astype(int)
        assert np.array_equal(truths[10][coords[:, 1], coords[:, 0]], labels == 1)
    assert records["masks/ct_a_liver.png"]["points"]["points3"] == [
        [int(x), int(y), int(label)] for (x, y), label in zip(p3["point_coords"], p3["point_labels"])
    ]
    assert [call["multimask_output"] for call in clicks] == [True, False, False]

    summary = result["summary"]
    assert summary["count"] == {"items": 3, "evaluated": 3, "skipped": 0, "images": 3}
    assert summary["overall"]["count"] == 3
    assert summary["overall"]["dice"]["box"] == round(100 * (0.9 + 0.8 + 0.75) / 3, 2) == 81.67
    assert summary["by_modality"]["CT"]["dice"] == {mode: 85.0 for mode in ev.MODES}
    assert summary["by_modality"]["MR"]["count"] == 1 and summary["by_modality"]["MR"]["dice"]["points5"] == 75.0
    assert summary["by_source"]["S1"]["dice"]["clicks"] == 90.0 and summary["by_source"]["S2"]["dice"]["box"] == 77.5
    assert summary["overall"]["clicks"] == {"dice": [81.67] * 3, "auc": 81.67}
    assert result["settings"] == {"label": "oracle", "family": "sam_med2d", "input_size": 256,
                                  "modes": list(ev.MODES), "num_clicks": 3, "seed": 0, "zoom": None}


def test_click_protocol_follows_the_largest_error_and_stops_early():
    truth = rect((40, 60), (5, 24), (5, 34))  # 600 px
    first = truth.copy()
    first[5:15, 5:15] = False  # 100 px miss
    first[30:34, 40:45] = True  # 20 px false positive
    second = truth.copy()
    second[23:25, 33:35] = False  # 4 px miss
    second[30:36, 40:46] = True  # 36 px false positive
    predictor = ScriptedPredictor([first, second, truth])
    curve = ev.click_curve(predictor, truth, num_clicks=5)

    assert len(predictor.calls) == 3  # stopped after the error-free third prediction
    one, two, three = predictor.calls
    assert one["point_coords"] == [[14, 14]] and one["point_labels"] == [1]  # centre of the 20 x 30 rectangle
    assert one["mask_input"] is None and one["multimask_output"] and one["best_only"]
    assert two["point_coords"] == [[14, 14], [9, 9]] and two["point_labels"] == [1, 1]  # inside the 10 x 10 miss
    assert not two["multimask_output"] and not two["best_only"]
    np.testing.assert_allclose(two["mask_input"], np.full((64, 64), 1 / (1 + np.exp(-1.0))), rtol=1e-6)
    assert three["point_coords"] == [[14, 14], [9, 9], [42, 32]] and three["point_labels"] == [1, 1, 0]  # false positive
    np.testing.assert_allclose(three["mask_input"], np.full((64, 64), 1 / (1 + np.exp(-2.0))), rtol=1e-6)

    d1, d2 = round(1000 / 1120, 4), round(1192 / 1232, 4)
    assert curve["dice"] == [d1, d2, 1.0, 1.0, 1.0]
    assert curve["auc"] == round(((d1 + d2) / 2 + (d2 + 1) / 2 + 2.0) / 4, 4)
    assert curve["points"] == [[14, 14, 1], [9, 9, 1], [42, 32, 0]] and curve["stopped_early"] is True


def test_click_protocol_uses_the_familys_mask_prompt_convention():
    truth = rect((20, 20), (2, 9), (2, 9))
    predictor = ScriptedPredictor([np.zeros_like(truth), truth])
    predictor.policy = family_policy("sam")  # raw logits as the mask prompt
    curve = ev.click_curve(predictor, truth, num_clicks=2)
    np.testing.assert_array_equal(predictor.calls[1]["mask_input"], np.ones((256, 256), np.float32))
    assert curve["dice"][1] == 1.0 and curve["stopped_early"] is False


def test_point_prompts_are_seeded_per_mask(oracle_data, tmp_path):
    root, truths = oracle_data
    items = read_dataset(root)

    def points(result):
        return {record["mask"]: record["points"] for record in result["items"]}

    full = points(ev.evaluate(ShiftOracle(truths, 2), items, modes=["points3", "points5"], progress=False))
    again = points(ev.evaluate(ShiftOracle(truths, 2), items[::-1][:2], modes=["points5", "points3"], progress=False))
    for key in again:  # the same whatever the other items and their order
        assert again[key] == full[key]
    other = points(ev.evaluate(ShiftOracle(truths, 2), items, modes=["points3", "points5"], seed=1, progress=False))
    assert other != full
    moved = shutil.copytree(root, tmp_path / "elsewhere" / "copy")  # names are relative to the dataset root
    assert points(ev.evaluate(ShiftOracle(truths, 2), read_dataset(moved), modes=["points3", "points5"], progress=False)) == full


def test_empty_masks_are_skipped_and_images_encoded_once(tiny_predictor, textured_data, monkeypatch):
    calls = []
    original = type(tiny_predictor).set_image
    monkeypatch.setattr(type(tiny_predictor), "set_image", lambda self, image: (calls.append(image.shape), original(self, image))[1])
    result = ev.evaluate(tiny_predictor, read_dataset(textured_data), modes=["box", "clicks"], num_clicks=2, progress=False)
    assert len(calls) == 2  # two images, four masks
    skipped = [record for record in result["items"] if "skipped" in record]
    assert [record["mask"] for record in skipped] == ["masks/b_empty.png"]
    assert result["summary"]["count"] == {"items": 4, "evaluated": 3, "skipped": 1, "images": 2}
    assert result["summary"]["by_modality"]["X-ray"]["count"] == 1
    for record in result["items"]:
        if "dice" in record:
            assert 0.0 <= record["dice"]["box"] <= 1.0 and len(record["clicks"]["dice"]) == 2


def test_same_inputs_give_identical_json(tiny_predictor, textured_data, tmp_path):
    items = read_dataset(textured_data)
    first = ev.evaluate(tiny_predictor, items, num_clicks=3, progress=False, label="tiny")
    second = ev.evaluate(tiny_predictor, items, num_clicks=3, progress=False, label="tiny")
    assert json.dumps(first) == json.dumps(second)
    one = ev.write_report(first, tmp_path / "one")["json"].read_bytes()
    two = ev.write_report(second, tmp_path / "two")["json"].read_bytes()
    assert one == two


def test_bad_inputs_are_rejected(oracle_data, tmp_path):
    root, truths = oracle_data
    items = read_dataset(root)
    with pytest.raises(ValueError, match="unknown evaluation modes"):
        ev.evaluate(ShiftOracle(truths, 2), items, modes=["boxes"], progress=False)
    with pytest.raises(ValueError, match="num_clicks"):
        ev.evaluate(ShiftOracle(truths, 2), items, num_clicks=0, progress=False)
    with pytest.raises(ValueError, match="once"):
        ev.evaluate(ShiftOracle(truths, 2), items + items[:1], progress=False)
    assert cv2.imwrite(str(root / "masks" / "ct_a_liver.png"), np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="W x H"):
        ev.evaluate(ShiftOracle(truths, 2), items, progress=False)


def test_progress_bar_shows_running_dice(oracle_data, capsys):
    root, truths = oracle_data
    ev.evaluate(ShiftOracle(truths, 2), read_dataset(root), modes=["box", "clicks"], num_clicks=2, label="oracle")
    err = capsys.readouterr().err
    assert "oracle" in err and "3/3" in err and "Dice box 81.7 c2 81.7" in err
    ev.evaluate(ShiftOracle(truths, 2), read_dataset(root), modes=["box"], progress=False)
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------------------------------------ reports


def test_report_files(oracle_data, tmp_path):
    root, truths = oracle_data
    result = ev.evaluate(ShiftOracle(truths, 2), read_dataset(root), num_clicks=4, progress=False, label="oracle")
    paths = ev.write_report(result, tmp_path / "report")
    assert set(paths) == {"json", "markdown", "plot"}
    assert json.loads(paths["json"].read_text()) == result
    markdown = paths["markdown"].read_text()
    for heading in ("## Overall", "## By modality", "## By source dataset", "## Dice vs. clicks"):
        assert heading in markdown
    assert "| box | 81.67 |" in markdown and "| CT | 2 | 85.00 |" in markdown and "| AUC | 81.67 |" in markdown
    image = cv2.imread(str(paths["plot"]))
    assert image is not None and image.shape == (540, 900, 3)
    blue = np.all(np.abs(image.astype(int) - (180, 119, 31)) < 10, axis=2).sum()
    assert blue > 100  # the curve and its legend entry

    box_only = ev.evaluate(ShiftOracle(truths, 2), read_dataset(root), modes=["box"], progress=False)
    assert set(ev.write_report(box_only, tmp_path / "box")) == {"json", "markdown"}


def test_compare_report_shows_both_and_the_difference(oracle_data, tmp_path):
    root, truths = oracle_data
    items = read_dataset(root)
    a = ev.evaluate(ShiftOracle(truths, 2), items, num_clicks=3, progress=False, label="bundle")
    b = ev.evaluate(ShiftOracle(truths, 4), items, num_clicks=3, progress=False, label="torch")
    paths = ev.write_report(a, tmp_path / "cmp", compare=b)
    markdown = paths["markdown"].read_text()
    # B: 0.8, 0.6, 0.5 -> 63.33; A - B = 18.34 on the overall box row
    assert "A = bundle, B = torch" in markdown
    assert "| box | 81.67 | 63.33 | +18.34 |" in markdown
    assert "| MR | 1 | 75.00 | 50.00 | +25.00 |" in markdown
    assert "| 1 | 81.67 | 63.33 | +18.34 |" in markdown
    document = json.loads(paths["json"].read_text())
    assert document["comparison"]["label"] == "torch" and document["comparison"]["common_items"] == 3
    image = cv2.imread(str(paths["plot"]))
    for color in ((180, 119, 31), (14, 127, 255)):
        assert np.all(np.abs(image.astype(int) - color) < 10, axis=2).sum() > 100
    assert "| box | 81.67 | 63.33 | +18.34 |" in ev.overall_table(a, b)

    partial = ev.evaluate(ShiftOracle(truths, 4), items[:2], modes=["box"], progress=False, label="torch")
    markdown = ev.write_report(a, tmp_path / "partial", compare=partial)["markdown"].read_text()
    assert "compared on the 2 masks both results hold" in markdown and "settings differ: modes" in markdown
    assert "| box | 85.00 | 70.00 | +15.00 |" in markdown and "| points1 | 85.00 | – | – |" in markdown
    assert "| clicks@3 | 85.00 | – | – |" in markdown and "| 4 |" not in markdown


# ---------------------------------------------------------------------------------------------------- CLI


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    ev.add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_flags_and_run(tiny_predictor, textured_data, tmp_path, capsys):
    args = parse(["--data", str(textured_data), "--modes", "box,clicks", "points1", "--clicks", "2", "--limit", "2",
                  "--out", str(tmp_path / "a"), "--no-progress"])
    assert ev.run(args, tiny_predictor, "tiny") == 0
    out = capsys.readouterr().out
    assert "tiny: 2 masks on 1 images" in out and "| Mode | Dice |" in out and "clicks@2" in out
    result = ev.load_result(tmp_path / "a")
    assert result["settings"]["modes"] == ["box", "points1", "clicks"] and len(result["items"]) == 2

    args = parse(["--data", str(textured_data), "--modes", "box", "--seed", "3", "--out", str(tmp_path / "b"),
                  "--compare", str(tmp_path / "a" / "evaluation.json"), "--no-progress"])
    assert ev.run(args, tiny_predictor, "again") == 0
    out = capsys.readouterr().out
    assert "| Mode | A | B | Δ (A − B) |" in out and "| box |" in out and "+0.00" in out

    assert ev.run(parse(["--data", str(tmp_path / "nowhere")]), tiny_predictor, "x") == 2
    assert "label2image.json" in capsys.readouterr().err
    args = parse(["--data", str(textured_data), "--modes", "box", "--sources", "elsewhere", "--no-progress"])
    assert ev.run(args, tiny_predictor, "x") == 2 and "no masks of the sources" in capsys.readouterr().err
    args = parse(["--data", str(textured_data), "--modes", "box", "--sources", "dem", "--out", str(tmp_path / "c"), "--no-progress"])
    assert ev.run(args, tiny_predictor, "x") == 0
    assert len(ev.load_result(tmp_path / "c")["items"]) == len(ev.load_result(tmp_path / "b")["items"])
    for bad in (["--modes", "boxes"], ["--clicks", "0"], ["--limit", "-1"]):
        with pytest.raises(SystemExit):
            parse(bad)
    defaults = parse([])
    assert defaults.data == [default_data_root()] and defaults.clicks == 5 and defaults.seed == 0 and not defaults.no_progress


def test_evaluation_runs_without_torch(oracle_data):
    root, _ = oracle_data
    script = textwrap.dedent(
        f"""
        import sys
        class BlockTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this process")
        sys.meta_path.insert(0, BlockTorch())
        import numpy as np
        from sammed_edge.runtime import evaluate as ev
        from sammed_edge.runtime.io import read_dataset
        from sammed_edge.runtime.predictor import PromptPredictor
        from sammed_edge.runtime.processing import family_policy

        class Everything(PromptPredictor):
            def set_image(self, image):
                self.shape = image.shape[:2]
            def predict(self, **kwargs):
                return np.ones((1, *self.shape), bool), np.ones(1, np.float32), np.zeros((1, 64, 64), np.float32)

        result = ev.evaluate(Everything(family_policy("sam_med2d")), read_dataset({str(root)!r}), num_clicks=2, progress=False)
        assert result["summary"]["count"]["evaluated"] == 3
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
        print("ok")
        """
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "ok"


def test_real_dev_set_quick_run(tiny_predictor, shared, tmp_path, capsys):
    root = default_data_root() or shared("data", "medseg-dev")
    args = parse(["--data", str(root), "--limit", "4", "--clicks", "3", "--out", str(tmp_path / "dev"), "--no-progress"])
    assert ev.run(args, tiny_predictor, "tiny") == 0
    result = ev.load_result(tmp_path / "dev")
    assert result["summary"]["count"]["items"] == 4
    for record in result["items"]:
        assert record["mask"].startswith("masks/") and record["image"].startswith("images/") and record["modality"]
        assert all(0.0 <= value <= 1.0 for value in record["dice"].values())
    assert (tmp_path / "dev" / "dice_vs_clicks.png").is_file()


def test_several_datasets_per_source_cap_and_zoom_flags(tiny_predictor, textured_data, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(textured_data, other)
    args = parse(["--data", str(textured_data), str(other), "--modes", "box", "clicks", "--clicks", "2",
                  "--out", str(tmp_path / "two"), "--no-progress"])
    assert ev.run(args, tiny_predictor, "x") == 0
    both = ev.load_result(tmp_path / "two")
    assert both["summary"]["count"]["items"] == 2 * len(read_dataset(textured_data))
    args = parse(["--data", str(textured_data), "--per-source", "1", "--modes", "box", "--out", str(tmp_path / "cap"),
                  "--no-progress"])
    assert ev.run(args, tiny_predictor, "x") == 0
    assert ev.load_result(tmp_path / "cap")["summary"]["count"]["items"] == 1
    # zoom on every box and click: windows recorded, masks still at the image's size
    args = parse(["--data", str(textured_data), "--modes", "box", "clicks", "--clicks", "2", "--zoom", "all",
                  "--zoom-max-fraction", "1.0", "--zoom-min-side", "8", "--out", str(tmp_path / "zoom"), "--no-progress"])
    assert ev.run(args, tiny_predictor, "x") == 0
    zoomed = ev.load_result(tmp_path / "zoom")
    assert zoomed["settings"]["zoom"]["boxes"] and zoomed["settings"]["zoom"]["clicks"]
    assert all("zoom" in record for record in zoomed["items"] if "dice" in record)
    with pytest.raises(SystemExit):
        parse(["--zoom", "sometimes"])
    assert ev.run(parse(["--data", str(textured_data), str(textured_data)]), tiny_predictor, "x") == 2
    assert "twice" in capsys.readouterr().err
