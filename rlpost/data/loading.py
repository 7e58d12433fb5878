"""Load dataset rows from the built-in task, local files and folders, or the Hugging Face Hub.

Every source ends as a list of dicts with the canonical fields `question` (non-empty text),
`answer` (text) and, when the data has one, `solution`, renamed from `data.question_field`,
`data.answer_field` and `data.solution_field`; every other field of a row is kept as it is
(reward functions receive them). Problems are reported as `DatasetError`s that name the source
and, for a bad row, its position: `line N` (1-based, physical line) for .jsonl and .csv,
`row N` (1-based) for the other formats. The answer is reduced to the final answer by
`data.answer_format` (GSM8K `#### 42`, MATH `\\boxed{...}`, plain, or detected): see answers.py.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

from rlpost.config.errors import closest
from rlpost.config.schema import DataConfig
from rlpost.data.answers import apply_answer_format
from rlpost.data.arithmetic import SPLITS, generate_arithmetic
from rlpost.data.errors import DatasetError

log = logging.getLogger(__name__)

BUILTIN_TASK = "arithmetic"
FILE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".pq", ".csv")

RawRow = tuple[str, Any]
"""(where the row is, e.g. "line 3" or "row 3"; the row as read, not yet checked)."""


def load_rows(source: str, split: str, *, data_config: DataConfig) -> list[dict]:
    """Rows of `source` with canonical fields.

    `source`: `arithmetic`, a .jsonl/.ndjson, .json, .parquet or .csv file, a folder written by
    `datasets.save_to_disk` (a Dataset, or a DatasetDict from which `split` is taken), or a Hub
    dataset id (`owner/name`, or `owner/name:config` to pick a configuration), loaded with `split`.
    The Hub is only contacted when `source` is not a local path.
    """
    if source == BUILTIN_TASK:
        return _arithmetic_rows(split, data_config)
    path = Path(source).expanduser()
    if path.is_dir():
        raw = _read_saved_dataset(path, split)
    elif path.is_file():
        raw = _read_file(path)
    elif _looks_like_local_path(source):
        raise DatasetError(f"data file {source} does not exist")
    else:
        raw = _read_hub(source, split)
    if not raw:
        raise DatasetError(f"{source}: contains no rows")
    return canonical_rows(raw, source, data_config)


def _arithmetic_rows(split: str, data_config: DataConfig) -> list[dict]:
    task = data_config.arithmetic
    if split not in SPLITS:
        raise DatasetError(f"the built-in arithmetic task has splits {', '.join(SPLITS)}, not {split!r}")
    size = task.train_size if split == "train" else task.test_size
    return generate_arithmetic(task.levels, size, seed=task.seed, max_operand=task.max_operand, split=split)


def _looks_like_local_path(source: str) -> bool:
    """True when `source` cannot be a Hub id, so a missing file is reported instead of a network lookup."""
    return (
        source.lower().endswith(FILE_SUFFIXES)
        or source.startswith((".", "/", "~"))
        or "\\" in source
        or source.count("/") > 1
    )


# ---------------------------------------------------------------- files


def _read_file(path: Path) -> list[RawRow]:
    suffix = path.suffix.lower()
    readers = {".jsonl": _read_jsonl, ".ndjson": _read_jsonl, ".json": _read_json, ".csv": _read_csv,
               ".parquet": _read_parquet, ".pq": _read_parquet}
    if suffix not in readers:
        supported = ", ".join(FILE_SUFFIXES)
        raise DatasetError(f"{path}: unsupported file type {suffix or '(none)'!r}; use one of {supported}")
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: the file is empty")
    return readers[suffix](path)


def _read_jsonl(path: Path) -> list[RawRow]:
    rows: list[RawRow] = []
    with path.open("rb") as handle:
        # Lines are decoded one by one so that a bad byte is reported with its line number.
        for number, raw_line in enumerate(handle, start=1):
            try:
                line = raw_line.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                problem = f"not UTF-8 text ({exc.reason} at byte {exc.start})"
                raise DatasetError(f"{path}, line {number}: {problem}") from None
            if not line.strip():
                continue
            try:
                rows.append((f"line {number}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}, line {number}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not rows:
        raise DatasetError(f"{path}: the file has no rows (only blank lines)")
    return rows


def _read_json(path: Path) -> list[RawRow]:
    try:
        document = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if isinstance(document, dict) and isinstance(document.get("data"), list):
        document = document["data"]
    if not isinstance(document, list):
        found = f"an object with keys {', '.join(document)}" if isinstance(document, dict) else type(document).__name__
        raise DatasetError(f'{path}: expected a list of objects or {{"data": [...]}}, found {found}')
    return [(f"row {number}", value) for number, value in enumerate(document, start=1)]


def _read_csv(path: Path) -> list[RawRow]:
    rows: list[RawRow] = []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        try:
            header = reader.fieldnames
            if not header:
                raise DatasetError(f"{path}: the file has no header row")
            line = reader.line_num + 1  # a record may span lines (quoted newlines): report where it starts
            for record in reader:
                rows.append((f"line {line}", _csv_record(path, line, record, len(header))))
                line = reader.line_num + 1
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{path}, line {reader.line_num + 1}: not UTF-8 text ({exc.reason})") from None
        except csv.Error as exc:
            raise DatasetError(f"{path}, line {reader.line_num}: malformed CSV ({exc})") from None
    return rows


def _csv_record(path: Path, line: int, record: dict, columns: int) -> dict:
    # DictReader files surplus values under the key None and fills missing ones with None.
    if None in record:
        raise DatasetError(f"{path}, line {line}: more values than the {columns} columns of the header")
    if None in record.values():
        raise DatasetError(f"{path}, line {line}: fewer values than the {columns} columns of the header")
    return record


def _read_parquet(path: Path) -> list[RawRow]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"{path}: not a readable parquet file ({exc})") from None
    return _numbered(table.to_pylist())


# ---------------------------------------------------------------- `datasets` folders and the Hub


def _read_saved_dataset(path: Path, split: str) -> list[RawRow]:
    if not ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        raise DatasetError(
            f"{path}: a folder must be written by datasets' save_to_disk (no dataset_dict.json or state.json found)"
        )
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises several unrelated types for a damaged folder
        raise DatasetError(f"{path}: cannot load the saved dataset ({type(exc).__name__}: {exc})") from None
    if isinstance(loaded, datasets.DatasetDict):
        loaded = _pick_split(loaded, split, str(path))
    return _numbered(loaded.to_list())


def _read_hub(source: str, split: str) -> list[RawRow]:
    import datasets

    name, _, config_name = source.partition(":")
    try:
        loaded = datasets.load_dataset(name, config_name or None, split=split)
    except Exception as exc:  # network, missing dataset, missing config, missing split: all reported the same way
        raise DatasetError(
            f"{source!r} is not a local file or folder, and loading it as a Hub dataset (split {split!r}) "
            f"failed: {type(exc).__name__}: {exc}"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        loaded = _pick_split(loaded, split, source)
    return _numbered(loaded.to_list())


def _pick_split(dataset_dict: Any, split: str, source: str) -> Any:
    if split not in dataset_dict:
        raise DatasetError(
            f"{source}: no split {split!r}{closest(split, dataset_dict)}; splits: {', '.join(dataset_dict)}"
        )
    return dataset_dict[split]


def _numbered(values: list[Any]) -> list[RawRow]:
    return [(f"row {number}", value) for number, value in enumerate(values, start=1)]


# ---------------------------------------------------------------- canonical fields


def canonical_rows(raw: list[RawRow], source: str, data_config: DataConfig) -> list[dict]:
    """Check every row, rename the configured fields to `question`, `answer` and `solution`, and reduce
    `answer` to the final answer by `data.answer_format` (rlpost/data/answers.py)."""
    wheres = [f"{source}, {where}" for where, _ in raw]
    rows = [_canonical_row(value, where, data_config) for where, (_, value) in zip(wheres, raw, strict=True)]
    _check_solution_field(rows, raw, source, data_config)
    rows = apply_answer_format(rows, wheres, source, data_config.answer_format, data_config.answer_field)
    if data_config.solution_field and not any("solution" in row for row in rows):
        log.info("%s: no %r field, so the rows have no worked solutions", source, data_config.solution_field)
    return rows


def _check_solution_field(rows: list[dict], raw: list[RawRow], source: str, data_config: DataConfig) -> None:
    solution_field = data_config.solution_field
    if solution_field and not any("solution" in row for row in rows):
        # The default name may simply be absent (most datasets have no worked solutions); another
        # name that no row has is a typo worth stopping for. (Compared by value, not by "was it set",
        # so that a dumped and reloaded config behaves the same.)
        if solution_field != DataConfig.model_fields["solution_field"].default:
            fields = list(raw[0][1]) if isinstance(raw[0][1], dict) else []
            raise DatasetError(
                f"{source}: no row has the solution field {solution_field!r}{closest(solution_field, fields)}; "
                f"fields: {', '.join(map(str, fields))} (set data.solution_field: null if the data has no solutions)"
            )


def _canonical_row(value: Any, where: str, data_config: DataConfig) -> dict:
    if not isinstance(value, dict):
        raise DatasetError(f"{where}: expected an object with fields, found {type(value).__name__}")
    question = _required(value, data_config.question_field, "question_field", where)
    answer = _required(value, data_config.answer_field, "answer_field", where)
    if not isinstance(question, str) or not question.strip():
        raise DatasetError(f"{where}: the question ({data_config.question_field!r}) is empty or not text: {question!r}")
    if answer is None or not str(answer).strip():
        raise DatasetError(f"{where}: the answer ({data_config.answer_field!r}) is empty: {answer!r}")
    mapped = {data_config.question_field, data_config.answer_field, data_config.solution_field}
    row = {key: item for key, item in value.items() if key not in mapped}
    row["question"] = question
    row["answer"] = answer if isinstance(answer, str) else str(answer)  # reward functions compare text
    solution = value.get(data_config.solution_field) if data_config.solution_field else None
    if solution is not None:
        row["solution"] = str(solution)
    return row


def _required(value: dict, field: str, setting: str, where: str) -> Any:
    if field in value:
        return value[field]
    fields = [str(key) for key in value]
    raise DatasetError(
        f"{where}: no field {field!r}{closest(field, fields)}; the row has fields: {', '.join(fields)} "
        f"(set data.{setting} to the field that holds it)"
    )

