"""The task board: progress and cancel requests shared by every worker process of a replica."""

from __future__ import annotations

import multiprocessing

from sam2_api.api.task_board import TaskBoard, public_progress


def write_from_another_process(path: str) -> None:
    TaskBoard(path).update("t2", "tracking", frames_done=4, frames_total=9)


def test_progress_is_seen_by_any_process(tmp_path):
    path = tmp_path / "board.db"
    board = TaskBoard.reset(path)
    process = multiprocessing.get_context("spawn").Process(target=write_from_another_process, args=(str(path),))
    process.start()
    process.join(30)
    assert public_progress(board.get("t2")) == {"phase": "tracking", "frames_done": 4, "frames_total": 9,
                                                "queue_position": None}


def test_phases_keep_the_counts_they_do_not_change(tmp_path):
    board = TaskBoard(tmp_path / "board.db")
    board.update("t", "queued", queue_position=2)
    assert board.get("t")["queue_position"] == 2
    board.update("t", "tracking", frames_done=0, frames_total=12)
    board.update("t", "tracking", frames_done=5)
    board.update("t", "storing")
    row = board.get("t")
    assert (row["phase"], row["frames_done"], row["frames_total"], row["queue_position"]) == ("storing", 5, 12, None)
    assert board.get("unknown") is None


def test_cancel_only_a_task_that_has_not_finished(tmp_path):
    board = TaskBoard(tmp_path / "board.db")
    board.update("running", "tracking")
    board.update("done", "completed")
    assert board.request_cancel("running") and board.cancel_requested("running")
    assert public_progress(board.get("running"))["phase"] == "canceling"  # until the task stops
    board.update("running", "canceled")
    assert public_progress(board.get("running"))["phase"] == "canceled"
    assert not board.request_cancel("done") and not board.cancel_requested("done")
    assert not board.request_cancel("unknown")


def test_reset_starts_empty(tmp_path):
    board = TaskBoard(tmp_path / "board.db")
    board.update("t", "tracking")
    assert TaskBoard.reset(tmp_path / "board.db").get("t") is None


def test_a_task_belongs_to_the_key_that_submitted_it(tmp_path):
    board = TaskBoard(tmp_path / "board.db")
    board.set_owner("a-task", "0123456789abcdef")
    board.set_owner("open-task", None)  # API keys off: everyone is the one caller
    assert board.owned_by("a-task", "0123456789abcdef")
    assert not board.owned_by("a-task", "fedcba9876543210") and not board.owned_by("a-task", None)
    assert board.owned_by("open-task", None) and not board.owned_by("open-task", "0123456789abcdef")
    assert not board.owned_by("unknown", None)
    assert TaskBoard(tmp_path / "board.db").owned_by("a-task", "0123456789abcdef")  # another worker sees it
