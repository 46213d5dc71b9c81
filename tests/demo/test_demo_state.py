"""Interaction state transitions of the demo (no predictor, no browser)."""

from __future__ import annotations

import numpy as np
import pytest

from sammed_edge.demo import state as st
from sammed_edge.runtime import InputError, family_policy


def fake_prediction(size=(20, 30), count=3, seed=0, low=8) -> st.Prediction:
    rng = np.random.default_rng(seed)
    return st.Prediction(
        masks=rng.random((count, *size)) > 0.5,
        iou=rng.random(count).astype(np.float32),
        low_res=rng.normal(size=(count, low, low)).astype(np.float32),
    )


def test_new_session_has_one_empty_object():
    state = st.new_session((20, 30))
    assert state.size == (20, 30)
    assert [o.label for o in state.objects] == [1]
    assert not state.active.has_prompt and state.active.mask is None
    assert not state.can_undo
    assert st.predict_kwargs(state, family_policy("sam")) is None
    with pytest.raises(InputError):
        st.new_session((0, 5))


def test_click_adds_prompt_and_marks_pending():
    state = st.click(st.new_session((20, 30)), 4, 7)
    state = st.click(state, 10, 2, positive=False)
    assert state.active.clicks == (st.Click(4, 7, True), st.Click(10, 2, False))
    assert state.active.pending
    assert len(state.history) == 2
    kwargs = st.predict_kwargs(state, family_policy("sam"), multimask="always")
    np.testing.assert_array_equal(kwargs["point_coords"], [[4, 7], [10, 2]])
    np.testing.assert_array_equal(kwargs["point_labels"], [1, 0])
    assert kwargs["box"] is None and kwargs["mask_input"] is None and kwargs["multimask_output"] is True


def test_multimask_for_ambiguous_prompts_only():
    policy = family_policy("sam")
    one = st.click(st.new_session((20, 30)), 4, 7)
    two = st.click(one, 5, 5)
    boxed = st.box_corner(st.box_corner(one, 1, 1), 9, 9)
    assert st.predict_kwargs(one, policy)["multimask_output"] is True
    assert st.predict_kwargs(two, policy)["multimask_output"] is False
    assert st.predict_kwargs(boxed, policy)["multimask_output"] is False
    assert st.predict_kwargs(two, policy, "always")["multimask_output"] is True
    assert st.predict_kwargs(one, policy, "never")["multimask_output"] is False
    with pytest.raises(InputError):
        st.predict_kwargs(one, policy, "sometimes")


@pytest.mark.parametrize("x, y", [(-1, 0), (0, -1), (30, 0), (0, 20)])
def test_click_outside_the_image_is_an_input_error(x, y):
    state = st.new_session((20, 30))
    with pytest.raises(InputError, match="outside"):
        st.click(state, x, y)
    with pytest.raises(InputError, match="outside"):
        st.box_corner(state, x, y)


def test_box_by_two_clicks_in_any_order():
    state = st.box_corner(st.new_session((20, 30)), 25, 3)
    assert state.pending_corner == (25, 3) and state.active.box is None and not state.active.pending
    assert st.predict_kwargs(state, family_policy("sam")) is None  # half a box is not a prompt
    state = st.box_corner(state, 5, 17)
    assert state.pending_corner is None
    assert state.active.box == (5, 3, 25, 17)
    assert state.active.pending
    np.testing.assert_array_equal(st.predict_kwargs(state, family_policy("sam"))["box"], [5, 3, 25, 17])
    # a second box replaces the first
    state = st.box_corner(st.box_corner(state, 1, 1), 2, 2)
    assert state.active.box == (1, 1, 2, 2)


def test_with_prediction_chooses_best_candidate_without_an_undo_step():
    state = st.click(st.new_session((20, 30)), 4, 7)
    prediction = fake_prediction()
    done = st.with_prediction(state, prediction)
    assert done.active.chosen == int(np.argmax(prediction.iou))
    assert not done.active.pending
    assert len(done.history) == len(state.history)
    np.testing.assert_array_equal(done.active.mask, prediction.masks[done.active.chosen])
    with pytest.raises(InputError, match="do not match"):
        st.with_prediction(state, fake_prediction(size=(21, 30)))


@pytest.mark.parametrize("family", ["sam", "sam_med2d"])
def test_previous_mask_is_fed_back(family):
    policy = family_policy(family)
    prediction = fake_prediction(low=policy.low_res_size)
    state = st.with_prediction(st.click(st.new_session((20, 30)), 4, 7), prediction)
    state = st.choose(state, 2)
    state = st.click(state, 9, 9, positive=False)
    kwargs = st.predict_kwargs(state, policy)
    expected = prediction.low_res[2]
    if policy.mask_input == "probability":
        expected = 1.0 / (1.0 + np.exp(-expected))
    np.testing.assert_allclose(kwargs["mask_input"], expected, rtol=1e-6)


def test_choose_candidate():
    state = st.with_prediction(st.click(st.new_session((20, 30)), 4, 7), fake_prediction())
    other = (state.active.chosen + 1) % 3
    chosen = st.choose(state, other)
    assert chosen.active.chosen == other and chosen.can_undo
    assert st.choose(chosen, other) is chosen  # choosing the chosen one is no step
    assert st.undo(chosen).active.chosen == state.active.chosen
    with pytest.raises(InputError):
        st.choose(state, 3)
    with pytest.raises(InputError, match="no mask candidates"):
        st.choose(st.new_session((20, 30)), 0)


def test_undo_walks_back_to_the_start():
    start = st.new_session((20, 30))
    clicked = st.with_prediction(st.click(start, 1, 1), fake_prediction())  # a click and its prediction: one step
    corner = st.box_corner(clicked, 2, 2)
    boxed = st.box_corner(corner, 8, 9)
    state = st.new_object(boxed)
    for expected in (boxed, corner, clicked, start):
        state = st.undo(state)
        assert st.summary(state) == st.summary(expected)
        np.testing.assert_array_equal(st.label_map(state), st.label_map(expected))
    assert not state.can_undo
    assert st.undo(state) is state


def test_reset_clears_everything_and_can_be_undone():
    state = st.new_object(st.with_prediction(st.click(st.new_session((20, 30)), 1, 1), fake_prediction()))
    state = st.box_corner(st.click(state, 3, 3), 5, 5)
    cleared = st.reset(state)
    assert len(cleared.objects) == 1 and not cleared.active.has_prompt and cleared.pending_corner is None
    assert st.summary(st.undo(cleared)) == st.summary(state)
    assert st.reset(cleared) is cleared


def test_new_object_keeps_the_previous_one_with_its_own_label():
    first = fake_prediction(seed=1)
    state = st.with_prediction(st.click(st.new_session((20, 30)), 1, 1), first)
    state = st.new_object(state)
    assert [o.label for o in state.objects] == [1, 2]
    assert st.new_object(state) is state  # the new object has no prompt yet
    state = st.click(state, 5, 5)
    assert state.objects[0].clicks == (st.Click(1, 1),) and state.active.clicks == (st.Click(5, 5),)
    assert st.predict_kwargs(state, family_policy("sam"))["mask_input"] is None  # a new object starts afresh
    second = fake_prediction(seed=2)
    state = st.with_prediction(state, second)
    labels = st.label_map(state)
    mask1, mask2 = first.masks[state.objects[0].chosen], second.masks[state.active.chosen]
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels == 2, mask2)  # the later object wins where they overlap
    np.testing.assert_array_equal(labels == 1, mask1 & ~mask2)
    assert [label for label, _ in st.object_masks(state)] == [1, 2]


def test_history_is_bounded():
    state = st.new_session((20, 30))
    for i in range(st.HISTORY_LIMIT + 10):
        state = st.click(state, i % 30, 0)
    assert len(state.history) == st.HISTORY_LIMIT
    assert all(not old.history for old in state.history)  # steps do not nest their own histories


def test_summary_and_digest():
    prediction = fake_prediction()
    state = st.with_prediction(st.click(st.new_session((20, 30)), 4, 7), prediction)
    summary = st.summary(state)
    mask = prediction.masks[state.active.chosen]
    assert summary["objects"][0]["clicks"] == [[4, 7, 1]]
    assert summary["objects"][0]["pixels"] == int(mask.sum())
    assert summary["objects"][0]["sha256"] == st.mask_digest(mask) == st.mask_digest(mask.astype(np.uint8) * 255)
    assert st.mask_digest(mask) != st.mask_digest(~mask)
