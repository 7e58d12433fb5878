"""data.answer_format: GSM8K `####`, MATH `\\boxed{}` and plain answers, detected or chosen; bad rows named."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from rlpost.config.schema import DataConfig
from rlpost.data import DatasetError, load_rows

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_gsm8k_sample_detected_and_parsed(caplog):
    with caplog.at_level(logging.INFO, logger="rlpost.data.answers"):
        rows = load_rows(str(EXAMPLES / "gsm8k_sample.jsonl"), "train", data_config=DataConfig())
    assert "data.answer_format auto -> gsm8k" in caplog.text
    assert len(rows) == 12
    assert [row["answer"] for row in rows[:4]] == ["23", "168", "15", "1200"]  # "#### 1,200" loses its comma
    # The reasoning becomes the worked solution: calculator annotations gone, the answer boxed at the end.
    assert rows[0]["solution"] == (
        "She made 36 + 28 = 64 muffins.\nAfter selling, 64 - 41 = 23 muffins are left.\nThe answer is \\boxed{23}."
    )


def test_math_sample_takes_the_last_box_with_nested_braces(caplog):
    config = DataConfig(question_field="problem", answer_field="solution")
    with caplog.at_level(logging.INFO, logger="rlpost.data.answers"):
        rows = load_rows(str(EXAMPLES / "math_sample.jsonl"), "train", data_config=config)
    assert "data.answer_format auto -> boxed" in caplog.text
    assert [row["answer"] for row in rows[:4]] == ["25", "6", "\\frac{2}{3}", "24"]
    assert rows[0]["solution"] == "$3^2 + 4^2 = 9 + 16 = \\boxed{25}$."  # the full text stays the solution
    assert rows[0]["level"] == "Level 1" and rows[0]["type"] == "Prealgebra"  # other fields are kept


def test_plain_sample_detected(caplog):
    with caplog.at_level(logging.INFO, logger="rlpost.data.answers"):
        rows = load_rows(str(EXAMPLES / "plain_sample.jsonl"), "train", data_config=DataConfig())
    assert "data.answer_format auto -> plain" in caplog.text
    assert [row["answer"] for row in rows[:3]] == ["15", "14", "42"]
    assert all("solution" not in row for row in rows)


def test_explicit_formats(tmp_path):
    source = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": " x \\boxed{7} then\n#### 8 "}])
    by_format = {fmt: load_rows(source, "train", data_config=DataConfig(answer_format=fmt))[0]["answer"]
                 for fmt in ("gsm8k", "boxed", "plain")}
    assert by_format == {"gsm8k": "8", "boxed": "7", "plain": "x \\boxed{7} then\n#### 8"}
    nested = write_jsonl(tmp_path / "n.jsonl", [{"question": "q", "answer": "\\boxed{1} or \\boxed{\\frac{a}{\\sqrt{b}}}"}])
    assert load_rows(nested, "train", data_config=DataConfig())[0]["answer"] == "\\frac{a}{\\sqrt{b}}"


def test_a_solution_field_is_not_overwritten(tmp_path):
    source = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "2 + 2 = 4\n#### 4", "solution": "mine"}])
    assert load_rows(source, "train", data_config=DataConfig())[0]["solution"] == "mine"


@pytest.mark.parametrize(
    ("answer_format", "answer", "message"),
    [
        ("gsm8k", "42", r"line 2: answer_format gsm8k, but the 'answer' field has no '#### answer' line: '42'"),
        ("gsm8k", "so 42\n#### ", r"line 2: answer_format gsm8k, but nothing follows '####' in the 'answer' field"),
        ("boxed", "the answer is 42", r"line 2: answer_format boxed, but the 'answer' field has no \\boxed\{...\}"),
        ("boxed", "so \\boxed{ }", r"line 2: answer_format boxed, but the last \\boxed\{\} of the 'answer' field is empty"),
        ("boxed", "so \\boxed{\\frac{1}{2}", r"line 2: .*the last \\boxed\{ of the 'answer' field is never closed"),
    ],
)
def test_a_row_the_format_cannot_parse_is_named(tmp_path, answer_format, answer, message):
    good = {"gsm8k": "#### 1", "boxed": "\\boxed{1}"}[answer_format]
    source = write_jsonl(tmp_path / "d.jsonl", [{"question": "q1", "answer": good}, {"question": "q2", "answer": answer}])
    with pytest.raises(DatasetError, match=message):
        load_rows(source, "train", data_config=DataConfig(answer_format=answer_format))


def test_auto_refuses_a_mix_and_names_a_row_of_each_kind(tmp_path):
    rows = [{"question": "a", "answer": "#### 1"}, {"question": "b", "answer": "#### 2"}, {"question": "c", "answer": "3"}]
    source = write_jsonl(tmp_path / "mixed.jsonl", rows)
    expected = r"mixes formats \(.*line 1: a '#### answer' line; .*line 3: a plain answer\); set data.answer_format"
    with pytest.raises(DatasetError, match=expected):
        load_rows(source, "train", data_config=DataConfig())


def test_builtin_task_answers_unchanged():
    config = DataConfig(arithmetic={"train_size": 20})
    rows = load_rows("arithmetic", "train", data_config=config)
    assert all(row["answer"].isdigit() for row in rows)


def test_gsm8k_sample_config_loads_its_rows():
    from rlpost.config import load_config

    config = load_config(str(EXAMPLES.parents[1] / "configs" / "gsm8k_sample.yaml"), [])
    assert config.data.answer_format == "gsm8k"
    rows = load_rows(config.data.train, "train", data_config=config.data)
    assert len(rows) == 12 and rows[3]["answer"] == "1200"
    assert config.train.prompts_per_step <= len(rows)
