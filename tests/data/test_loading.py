"""load_rows: every source format, field mapping, and errors that name the file and the row."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlpost.config.schema import DataConfig
from rlpost.data import DatasetError, load_rows

ROWS = [
    {"id": "a", "question": "What is 1 + 1?", "answer": "2", "solution": "1 + 1 = 2", "topic": "sum"},
    {"id": "b", "question": "What is 3 - 1?", "answer": "2", "solution": "3 - 1 = 2", "topic": "difference"},
    {"id": "c", "question": "What is 2 × 3?", "answer": "6", "solution": "2 × 3 = 6", "topic": "product"},
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_format(kind: str, folder: Path, rows: list[dict]) -> Path:
    """`rows` written as `kind`; the path to give load_rows."""
    if kind == "jsonl":
        return write_jsonl(folder / "data.jsonl", rows)
    if kind == "json-list":
        path = folder / "data.json"
        path.write_text(json.dumps(rows))
        return path
    if kind == "json-data":
        path = folder / "data.json"
        path.write_text(json.dumps({"data": rows, "version": 1}))
        return path
    if kind == "parquet":
        path = folder / "data.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
        return path
    if kind == "csv":
        return write_csv(folder / "data.csv", rows)
    if kind == "saved-dataset":
        datasets.Dataset.from_list(rows).save_to_disk(str(folder / "saved"))
        return folder / "saved"
    if kind == "saved-dataset-dict":
        split = datasets.Dataset.from_list(rows)
        other = datasets.Dataset.from_list(rows[:1])
        datasets.DatasetDict({"train": split, "validation": other}).save_to_disk(str(folder / "saved"))
        return folder / "saved"
    raise AssertionError(kind)


FORMATS = ["jsonl", "json-list", "json-data", "parquet", "csv", "saved-dataset", "saved-dataset-dict"]


@pytest.mark.parametrize("kind", FORMATS)
def test_every_format_loads_the_same_rows(kind, tmp_path):
    path = write_format(kind, tmp_path, ROWS)
    assert load_rows(str(path), "train", data_config=DataConfig()) == ROWS


@pytest.mark.parametrize("kind", FORMATS)
def test_field_mapping_renames_and_keeps_other_fields(kind, tmp_path):
    renamed = [
        {"problem": r["question"], "final": r["answer"], "worked": r["solution"], "topic": r["topic"]} for r in ROWS
    ]
    path = write_format(kind, tmp_path, renamed)
    config = DataConfig(question_field="problem", answer_field="final", solution_field="worked")
    rows = load_rows(str(path), "train", data_config=config)
    assert rows == [{"topic": r["topic"], "question": r["question"], "answer": r["answer"], "solution": r["solution"]}
                    for r in ROWS]


def test_dataset_dict_split_is_selected(tmp_path):
    path = write_format("saved-dataset-dict", tmp_path, ROWS)
    assert load_rows(str(path), "validation", data_config=DataConfig()) == ROWS[:1]
    expected = r"no split 'valid' \(did you mean 'validation'\?\); splits: train, validation"
    with pytest.raises(DatasetError, match=expected):
        load_rows(str(path), "valid", data_config=DataConfig())


def test_numeric_answers_become_text_and_missing_solutions_are_fine(tmp_path):
    rows = [{"question": "1 + 1?", "answer": 2}, {"question": "2 + 2?", "answer": 4.5}]
    path = write_jsonl(tmp_path / "numbers.jsonl", rows)
    rows = load_rows(str(path), "train", data_config=DataConfig())
    assert rows == [{"question": "1 + 1?", "answer": "2"}, {"question": "2 + 2?", "answer": "4.5"}]


def test_solution_field_named_explicitly_but_absent(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"question": "q", "answer": "1", "rationale": "r"}])
    with pytest.raises(DatasetError) as error:
        load_rows(str(path), "train", data_config=DataConfig(solution_field="rational"))
    message = str(error.value)
    assert "data.jsonl" in message and "'rational'" in message and "did you mean 'rationale'" in message


def test_blank_lines_in_jsonl_are_skipped_and_counted_in_line_numbers(tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps({"question": "", "answer": "1"}) + "\n")
    with pytest.raises(DatasetError, match=r"gaps\.jsonl, line 3: the question \('question'\) is empty"):
        load_rows(str(path), "train", data_config=DataConfig())


# ---------------------------------------------------------------- malformed rows name the file and the row


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([ROWS[0], ROWS[1], [1, 2]], r"data\.jsonl, line 3: expected an object with fields, found list"),
        ([ROWS[0], "text"], r"data\.jsonl, line 2: expected an object with fields, found str"),
        ([ROWS[0], {"answer": "1"}], r"data\.jsonl, line 2: no field 'question'; the row has fields: answer"),
        ([{"question": "   ", "answer": "1"}], r"data\.jsonl, line 1: the question \('question'\) is empty"),
        ([ROWS[0], {"question": "q", "answer": None}], r"data\.jsonl, line 2: the answer \('answer'\) is empty"),
        ([{"question": 7, "answer": "1"}], r"data\.jsonl, line 1: the question \('question'\) is empty or not text"),
    ],
)
def test_malformed_jsonl_rows(tmp_path, lines, expected):
    path = write_jsonl(tmp_path / "data.jsonl", lines)
    with pytest.raises(DatasetError, match=expected):
        load_rows(str(path), "train", data_config=DataConfig())


def test_undecodable_jsonl_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(ROWS[0]) + '\n{"question": "q", "answer": \n')
    with pytest.raises(DatasetError, match=r"data\.jsonl, line 2: invalid JSON \(Expecting value at column"):
        load_rows(str(path), "train", data_config=DataConfig())


def test_non_utf8_jsonl_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(json.dumps(ROWS[0]).encode() + b'\n{"question": "\xff", "answer": "1"}\n')
    with pytest.raises(DatasetError, match=r"data\.jsonl, line 2: not UTF-8 text"):
        load_rows(str(path), "train", data_config=DataConfig())


def test_wrong_field_names_list_the_fields_and_suggest(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"Question": "q", "Answer": "1"}])
    with pytest.raises(DatasetError) as error:
        load_rows(str(path), "train", data_config=DataConfig())
    message = str(error.value)
    assert "data.jsonl, line 1: no field 'question' (did you mean 'Question'?)" in message
    assert "fields: Question, Answer" in message and "data.question_field" in message


def test_malformed_json_rows_are_numbered(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([ROWS[0], ROWS[1], {"question": "q"}]))
    with pytest.raises(DatasetError, match=r"data\.json, row 3: no field 'answer'"):
        load_rows(str(path), "train", data_config=DataConfig())


def test_undecodable_json(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[{"question": "q", "answer": "1"},\n {"question": }]')
    with pytest.raises(DatasetError, match=r"data\.json: invalid JSON at line 2 column"):
        load_rows(str(path), "train", data_config=DataConfig())


def test_json_of_the_wrong_shape(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"rows": ROWS}))
    expected = r'data\.json: expected a list of objects or \{"data": \[\.\.\.\]\}, found an object with keys rows'
    with pytest.raises(DatasetError, match=expected):
        load_rows(str(path), "train", data_config=DataConfig())


def test_csv_rows_are_numbered_by_line(tmp_path):
    # Line 1 is the header, so the third record (a question with an embedded newline before it) is on line 5.
    path = tmp_path / "data.csv"
    path.write_text('question,answer\n"two\nlines",1\nq2,2\n,3\n')
    with pytest.raises(DatasetError, match=r"data\.csv, line 5: the question \('question'\) is empty"):
        load_rows(str(path), "train", data_config=DataConfig())


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("question,answer\nq1,1\nq2,2,extra\n", r"data\.csv, line 3: more values than the 2 columns"),
        ("question,answer\nq1\n", r"data\.csv, line 2: fewer values than the 2 columns"),
    ],
)
def test_csv_with_wrong_number_of_values(tmp_path, content, expected):
    path = tmp_path / "data.csv"
    path.write_text(content)
    with pytest.raises(DatasetError, match=expected):
        load_rows(str(path), "train", data_config=DataConfig())


def test_parquet_and_saved_dataset_rows_are_numbered(tmp_path):
    rows = [ROWS[0], {"question": "q", "answer": ""}]
    for kind in ("parquet", "saved-dataset"):
        (tmp_path / kind).mkdir()
        path = write_format(kind, tmp_path / kind, rows)
        with pytest.raises(DatasetError, match=rf"{path.name}, row 2: the answer \('answer'\) is empty"):
            load_rows(str(path), "train", data_config=DataConfig())


# ---------------------------------------------------------------- missing, empty, unreadable sources


def test_missing_file_never_goes_to_the_hub(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("load_dataset must not be called for a local path")

    monkeypatch.setattr(datasets, "load_dataset", no_network)
    for source in (str(tmp_path / "nope.jsonl"), "data/train.jsonl", "./train", "~/x/y/z"):
        with pytest.raises(DatasetError, match="does not exist"):
            load_rows(source, "train", data_config=DataConfig())


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.json", "empty.csv", "empty.parquet"])
def test_empty_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(DatasetError, match=rf"{name}: the file is empty"):
        load_rows(str(path), "train", data_config=DataConfig())


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("blank.jsonl", "\n  \n", "no rows"),
        ("nothing.json", "[]", "contains no rows"),
        ("header.csv", "question,answer\n", "contains no rows"),
        ("none.csv", "\n", "no header row"),
    ],
)
def test_files_without_rows(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DatasetError, match=rf"{name}: .*{expected}"):
        load_rows(str(path), "train", data_config=DataConfig())


def test_empty_parquet_and_saved_dataset(tmp_path):
    empty = pa.table({"question": pa.array([], pa.string()), "answer": pa.array([], pa.string())})
    pq.write_table(empty, tmp_path / "empty.parquet")
    datasets.Dataset.from_dict({"question": [], "answer": []}).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(DatasetError, match=r"empty\.parquet: contains no rows"):
        load_rows(str(tmp_path / "empty.parquet"), "train", data_config=DataConfig())
    # datasets 5.2 itself fails to reload an empty saved dataset; either way the folder is named.
    with pytest.raises(DatasetError, match=r"saved: (contains no rows|cannot load the saved dataset)"):
        load_rows(str(tmp_path / "saved"), "train", data_config=DataConfig())


def test_not_a_parquet_file(tmp_path):
    path = tmp_path / "data.parquet"
    path.write_text("question,answer\nq,1\n")
    with pytest.raises(DatasetError, match=r"data\.parquet: not a readable parquet file"):
        load_rows(str(path), "train", data_config=DataConfig())


def test_unsupported_file_type_and_plain_folder(tmp_path):
    (tmp_path / "data.txt").write_text("q")
    with pytest.raises(DatasetError, match=r"data\.txt: unsupported file type '\.txt'"):
        load_rows(str(tmp_path / "data.txt"), "train", data_config=DataConfig())
    with pytest.raises(DatasetError, match="save_to_disk"):
        load_rows(str(tmp_path), "train", data_config=DataConfig())


# ---------------------------------------------------------------- the Hub (faked: tests never touch the network)


def test_hub_id_goes_to_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(name, config_name=None, *, split):
        calls.append((name, config_name, split))
        return datasets.Dataset.from_list([{"problem": "1 + 1?", "answer": "2"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    config = DataConfig(question_field="problem")
    assert load_rows("someone/math", "test", data_config=config) == [{"question": "1 + 1?", "answer": "2"}]
    load_rows("openai/gsm8k:main", "train", data_config=config)
    assert calls == [("someone/math", None, "test"), ("openai/gsm8k", "main", "train")]


def test_hub_failure_is_a_dataset_error(monkeypatch):
    def failing_load_dataset(name, config_name=None, *, split):
        raise FileNotFoundError(f"Dataset {name} doesn't exist on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", failing_load_dataset)
    expected = r"'someone/missing' is not a local file or folder.*doesn't exist on the Hub"
    with pytest.raises(DatasetError, match=expected):
        load_rows("someone/missing", "train", data_config=DataConfig())


# ---------------------------------------------------------------- the built-in task


def test_arithmetic_source_uses_the_config():
    config = DataConfig(arithmetic={"levels": [2], "train_size": 30, "test_size": 7, "seed": 5})
    train = load_rows("arithmetic", "train", data_config=config)
    test = load_rows("arithmetic", "test", data_config=config)
    assert len(train) == 30 and len(test) == 7
    assert {row["level"] for row in train + test} == {2}
    assert not {row["question"] for row in train} & {row["question"] for row in test}
    with pytest.raises(DatasetError, match="splits train, test"):
        load_rows("arithmetic", "validation", data_config=config)
