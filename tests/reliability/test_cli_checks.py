"""The CLI's own checks: `rlpost validate`, and `eval`, `plot`, `model fetch` and `--log-level` mistakes named
in one `error:` line (exit 2) before any model, engine or worker loads, and without touching a user's files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.reliability.runs import QUICKSTART, rlpost

QUICK = ["data.test=null", "train.prompts_per_step=2", "learner.backend=torch"]


def error_line(result) -> str:
    """The one `error:` line, which must be the last line of stderr, with no traceback."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:]
    return lines[-1]


def test_validate_passes_a_good_config_and_creates_nothing(tiny_chat_model_path: str, tmp_path: Path):
    result = rlpost("validate", str(QUICKSTART), f"model.path={tiny_chat_model_path}", f"train.output_dir={tmp_path / 'run'}", *QUICK)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == [
        f"ok: 4000 train rows; model {tiny_chat_model_path}; rewards math_verify, boxed_format"
    ]
    assert not (tmp_path / "run").exists()


def test_validate_names_a_row_without_the_configured_field(tiny_chat_model_path: str, tmp_path: Path):
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"Question": "What is 1 + 1?", "Answer": "2"}) + "\n")
    result = rlpost("validate", f"model.path={tiny_chat_model_path}", f"data.train={data}", *QUICK)
    assert error_line(result) == (
        f"error: {data}, line 1: no field 'question' (did you mean 'Question'?); the row has fields: Question, Answer "
        "(set data.question_field to the field that holds it)"
    )


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--samples", "0"], "error: eval --samples = 0: must be at least 1"),
        (["--limit", "0"], "error: eval --limit = 0: must be at least 1"),
        (["--out", "/nonexistent/folder/eval.json"], "error: eval --out /nonexistent/folder/eval.json: folder /nonexistent/folder does not exist"),
    ],
)
def test_eval_arguments_are_checked_before_the_model_loads(options: list[str], expected: str):
    # The model path does not exist: the argument is named first, so nothing was loaded.
    assert error_line(rlpost("eval", "--model", "/never/loaded", "--data", "arithmetic", *options)) == expected


def test_eval_on_a_model_folder_without_tokenizer(tiny_model_path: str):
    result = rlpost("eval", "--model", tiny_model_path, "--data", "arithmetic", "--limit", "2")
    assert error_line(result).startswith(f"error: model folder {tiny_model_path} has no tokenizer files")


def test_unknown_log_level():
    result = rlpost("--log-level", "verbose", "validate")
    assert error_line(result) == "error: --log-level 'verbose' is not a level; use one of DEBUG, INFO, WARNING, ERROR, CRITICAL"


def test_plot_of_a_missing_run_folder(tmp_path: Path):
    result = rlpost("plot", str(tmp_path / "no-run"))
    assert error_line(result) == f"error: run folder {tmp_path / 'no-run'} does not exist (give the train.output_dir of a run)"


def test_model_fetch_refuses_a_non_empty_folder_and_keeps_its_files(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("keep me")
    result = rlpost("model", "fetch", "smollm2-135m-instruct", "--to", str(tmp_path))
    assert error_line(result) == (
        f"error: --to {tmp_path}: the folder is not empty and holds no complete model; give a new or empty folder "
        "(rlpost never deletes files it did not write)"
    )
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]


def test_hub_model_offline_and_not_cached_is_named(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # an empty cache
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    expected = ("error: model 'rlpost-test/tiny-llama' is not in the Hugging Face cache and HF_HUB_OFFLINE=1 forbids "
                "downloading: download it once online (`rlpost model fetch`), or give a local folder")
    assert error_line(rlpost("model", "fetch", "rlpost-test/tiny-llama", "--to", str(tmp_path / "model"))) == expected
    assert error_line(rlpost("validate", "model.path=rlpost-test/tiny-llama", *QUICK)) == expected
    assert not (tmp_path / "model").exists()
