"""The critique prompt and the strict answer parser (ProcessBench conventions)."""

import pytest

from actprm.errors import ActPRMError
from actprm.judges.prompt import (answer_schema, load_template, max_prompt_tokens, parse_answer, step_labels)


def test_prompt_shows_steps_as_paragraphs_indexed_from_zero():
    prompt = load_template("processbench-v1").render("What is 2+3*4?", ["3*4 = 12", "2 + 12 = 14"])
    assert "<paragraph_0>\n3*4 = 12\n</paragraph_0>" in prompt
    assert "<paragraph_1>\n2 + 12 = 14\n</paragraph_1>" in prompt
    assert "<paragraph_2>" not in prompt
    assert "What is 2+3*4?" in prompt and "\\boxed{}" in prompt and "-1" in prompt


def test_custom_template_file_is_versioned_by_content(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("Q: {problem}\nS: {tagged_response}\nAnswer in \\boxed{}.")
    a = load_template(path=path)
    assert a.version.startswith("custom-") and a.render("q", ["s"]).startswith("Q: q\nS: <paragraph_0>")
    path.write_text("Other wording {problem} {tagged_response}")
    assert load_template(path=path).version != a.version  # labels bought with another prompt are not reused
    (tmp_path / "bad.txt").write_text("no placeholders")
    with pytest.raises(ActPRMError, match="placeholder"):
        load_template(path=tmp_path / "bad.txt")
    with pytest.raises(ActPRMError, match="unknown prompt version"):
        load_template("processbench-v9")


@pytest.mark.parametrize("text, expected", [
    ("The second step is wrong. \\boxed{1}", 1),
    ("All paragraphs are correct: \\boxed{-1}", -1),
    ("\\boxed{ 0 }", 0),
    ("<think>maybe \\boxed{2}? no.</think> Final: \\boxed{0}", 0),  # reasoning is not the answer
])
def test_parser_accepts_exactly_one_boxed_integer_in_range(text, expected):
    parsed = parse_answer(text, n_steps=3)
    assert parsed.ok and parsed.first_error == expected


@pytest.mark.parametrize("text, finish, reason", [
    ("no box at all, paragraph 1 is wrong", "stop", "no_boxed"),
    ("\\boxed{1} or maybe \\boxed{2}", "stop", "multiple_boxed"),
    ("\\boxed{one}", "stop", "not_integer"),
    ("\\boxed{1.5}", "stop", "not_integer"),
    ("\\boxed{3}", "stop", "out_of_range"),       # 3 steps: valid indices are -1..2
    ("\\boxed{-2}", "stop", "out_of_range"),
    ("Paragraph 0 is \\boxed{0}", "length", "truncated"),  # cut off: never trusted
    ("", "stop", "empty"),
    ("<think>paragraph 1 looks", "stop", "unfinished_reasoning"),
])
def test_parser_rejects_everything_else_with_a_reason(text, finish, reason):
    parsed = parse_answer(text, n_steps=3, finish_reason=finish)
    assert not parsed.ok and parsed.first_error is None and parsed.reason == reason


def test_structured_output_answers_are_json_checked_against_the_range():
    assert parse_answer('{"first_error": 2}', 3, structured=True).first_error == 2
    assert parse_answer('{"first_error": 3}', 3, structured=True).reason == "out_of_range"
    assert parse_answer('{"first_error": true}', 3, structured=True).reason == "not_integer"
    assert parse_answer("\\boxed{1}", 3, structured=True).reason == "bad_json"
    schema = answer_schema(3)["properties"]["first_error"]
    assert (schema["minimum"], schema["maximum"]) == (-1, 2)


def test_step_labels_one_before_first_error_zero_at_it_none_after():
    assert step_labels(2, 5) == [1, 1, 0]
    assert step_labels(0, 5) == [0]
    assert step_labels(-1, 3) == [1, 1, 1]


def test_reservation_bound_covers_any_byte_level_tokenization():
    prompt = load_template().render("Ünïcödé ∑ question", ["√4 = 2"])
    assert max_prompt_tokens(prompt) >= len(prompt.encode())
