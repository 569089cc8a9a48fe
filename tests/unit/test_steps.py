"""/segment's `steps` (a refined mask's earlier clicks, run in one request): what parse_steps keeps,
and one message in words for each mistake."""

from __future__ import annotations

import pytest

from sam2_api.api.fields.segment import MAX_STEPS, Step, parse_steps
from sam2_api.errors import InvalidPrompt
from sam2_api.prompts import Prompt

MASK_ID = "m_" + "Q" * 22
LAST = Prompt.parse(points=[[10, 10], [20, 20], [30, 5]], labels=[1, 1, 0])


def test_steps_are_prompts_with_the_mask_each_next_step_refines():
    steps = parse_steps([{"points": [[10, 10]], "candidates": True, "chosen": 2, "previous_mask_id": MASK_ID},
                         {"points": [[10, 10], [20, 20]], "labels": [1, 1]},
                         {"box": [1, 2, 30, 40], "chosen": 0}], LAST, with_mask_input=False)
    assert steps == [Step(Prompt(points=[[10, 10]], candidates=True, previous_mask_id=MASK_ID), 2),
                     Step(Prompt(points=[[10, 10], [20, 20]], labels=[1, 1]), 0),
                     Step(Prompt(box=[1, 2, 30, 40]), 0)]
    assert parse_steps(None, LAST, with_mask_input=True) == [] and parse_steps([], LAST, with_mask_input=False) == []


STEP = {"points": [[10, 10]]}
REFUSED = [
    ("not a list", {"points": [[10, 10]]}, LAST, False,
     f"`steps` must be a list of at most {MAX_STEPS} earlier prompts, oldest first, e.g. "),
    ("too many", [STEP] * (MAX_STEPS + 1), LAST, False, f"`steps` must be a list of at most {MAX_STEPS} earlier prompts"),
    ("with a top-level previous_mask_id", [STEP], LAST.model_copy(update={"previous_mask_id": MASK_ID}), False,
     "send `previous_mask_id` on the first of `steps`, not beside them"),
    ("with mask_input", [STEP], LAST, True, "`mask_input` does not go with `steps`"),
    ("a step not an object", [STEP, [[10, 10]]], LAST, False,
     "steps[1] must be an object with /segment's prompt fields and `chosen`; got [[10, 10]]"),
    ("an unknown key", [{**STEP, "chosen_mask": 1}], LAST, False, "steps[0]: unknown field 'chosen_mask': a step has "),
    ("a later step's previous_mask_id", [STEP, {**STEP, "previous_mask_id": MASK_ID}], LAST, False,
     "steps[1]: only the first step may have a `previous_mask_id`"),
    ("a malformed prompt", [STEP, {"points": [[10, 10]], "labels": [1, 0]}], LAST, False,
     "steps[1]: invalid prompt: `labels` has 2 entries but `points` has 1"),
    ("an empty step", [{}], LAST, False, "steps[0]: invalid prompt: give at least one of `points` or `box`"),
    ("chosen without candidates", [{**STEP, "chosen": 1}], LAST, False,
     "steps[0]: `chosen` must be 0 (the step's best mask) unless the step has `candidates`: true; got 1"),
    ("chosen past the candidates", [{**STEP, "candidates": True, "chosen": 3}], LAST, False,
     "steps[0]: `chosen` must be 0 to 2, an index into the step's candidates, best first; got 3"),
    ("chosen negative", [{**STEP, "candidates": True, "chosen": -1}], LAST, False, "`chosen` must be 0 to 2"),
    ("chosen not an integer", [{**STEP, "candidates": True, "chosen": "1"}], LAST, False, "got '1'"),
    ("chosen a boolean", [{**STEP, "candidates": True, "chosen": True}], LAST, False, "got True"),
]


@pytest.mark.parametrize("case, value, prompt, with_mask_input, words", REFUSED, ids=[c[0] for c in REFUSED])
def test_each_mistake_gets_its_own_message(case, value, prompt, with_mask_input, words):
    with pytest.raises(InvalidPrompt) as refused:
        parse_steps(value, prompt, with_mask_input)
    assert words in str(refused.value)


def test_the_limit_itself_is_accepted():
    assert len(parse_steps([STEP] * MAX_STEPS, LAST, with_mask_input=False)) == MAX_STEPS
