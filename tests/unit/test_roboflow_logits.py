"""Roboflow's logits cache over ours (sam2_api.api.roboflow_logits): which earlier prompt set a
request refines, by Roboflow's rule (a strict subset, one point fewer first, else the most points),
shared through one SQLite file, bounded, and per image."""

from __future__ import annotations

import pytest

from sam2_api.api.roboflow_logits import LogitsIndex, PromptKey, match

BOX = (50.0, 40.0, 20.0, 10.0)


def key(*points: tuple, box=None) -> PromptKey:
    return PromptKey(box, frozenset((float(x), float(y), bool(p)) for x, y, p in points))


@pytest.fixture
def index(tmp_path) -> LogitsIndex:
    return LogitsIndex(tmp_path / "logits.db")


def test_a_set_that_extends_a_saved_one_gets_its_mask_ids(index):
    index.save("t|img", [key((1, 1, True))], ["m_one"])
    assert index.find("t|img", [key((1, 1, True), (5, 5, False))]) == ["m_one"]


def test_the_same_set_again_is_not_a_strict_subset_and_finds_nothing(index):
    index.save("t|img", [key((1, 1, True))], ["m_one"])
    assert index.find("t|img", [key((1, 1, True))]) == [None]


def test_one_point_fewer_wins_over_a_larger_older_match_and_the_newest_over_equals(index):
    now = [key((1, 1, True), (2, 2, True), (3, 3, True), (4, 4, False))]
    index.save("t|img", [key((1, 1, True), (2, 2, True), (3, 3, True))], ["m_three"])
    index.save("t|img", [key((1, 1, True))], ["m_one"])
    assert index.find("t|img", now) == ["m_three"]  # 3 = 4 - 1 points
    index.save("t|img", [key((1, 1, True), (2, 2, True))], ["m_two"])
    bigger = [key((1, 1, True), (2, 2, True), (3, 3, True), (4, 4, False), (5, 5, True))]
    assert index.find("t|img", bigger) == ["m_three"]  # no 4-point set: the most points


def test_boxes_must_be_equal_and_points_a_subset(index):
    index.save("t|img", [key((1, 1, True), box=BOX)], ["m_box"])
    assert index.find("t|img", [key((1, 1, True), (2, 2, True), box=BOX)]) == ["m_box"]
    assert index.find("t|img", [key((1, 1, True), (2, 2, True))]) == [None]  # no box now
    assert index.find("t|img", [key((1, 1, False), (2, 2, True), box=BOX)]) == [None]  # the label differs


def test_each_prompt_of_a_set_gets_the_id_of_the_prompt_it_extends():
    earlier = [key((9, 9, True)), key((1, 1, True))]
    now = [key((1, 1, True), (2, 2, True)), key((9, 9, True)), key((7, 7, True))]
    assert match(earlier, now) == [1, 0, None]
    assert match([key((8, 8, True))], now) is None


def test_images_and_callers_are_apart(index):
    index.save("t|img", [key((1, 1, True))], ["m_one"])
    assert index.find("t|other", [key((1, 1, True), (2, 2, True))]) == [None]
    assert index.find("u|img", [key((1, 1, True), (2, 2, True))]) == [None]


def test_saving_a_set_again_replaces_its_ids(index):
    index.save("t|img", [key((1, 1, True))], ["m_old"])
    index.save("t|img", [key((1, 1, True))], ["m_new"])
    assert index.find("t|img", [key((1, 1, True), (2, 2, True))]) == ["m_new"]


def test_only_the_newest_sets_are_kept(tmp_path):
    index = LogitsIndex(tmp_path / "logits.db", max_entries=2)
    for n in range(3):
        index.save("t|img", [key((n, n, True))], [f"m_{n}"])
    assert index.find("t|img", [key((0, 0, True), (9, 9, True))]) == [None]
    assert index.find("t|img", [key((2, 2, True), (9, 9, True))]) == ["m_2"]


def test_another_process_sees_what_one_saved_and_reset_forgets_it(tmp_path):
    LogitsIndex(tmp_path / "logits.db").save("t|img", [key((1, 1, True))], ["m_one"])
    assert LogitsIndex(tmp_path / "logits.db").find("t|img", [key((1, 1, True), (2, 2, True))]) == ["m_one"]
    fresh = LogitsIndex.reset(tmp_path / "logits.db")
    assert fresh.find("t|img", [key((1, 1, True), (2, 2, True))]) == [None]
