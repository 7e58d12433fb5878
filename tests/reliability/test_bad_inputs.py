"""The bad-input catalogue of docs/reliability.md: each mistake stops with a message naming the key, the file
or the row, and `rlpost train` prints it as one `error:` line without a traceback (`--debug` shows one).

Cases tested where they are implemented (config keys and values, dataset files and rows, reward files) are
listed in docs/reliability.md and not repeated here; these are the remaining ones and the CLI's behaviour.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from rlpost.config import ConfigError, load_config
from rlpost.config.schema import DataConfig
from rlpost.data import DatasetError, build_training_prompts
from rlpost.io.checkpoint import write_checkpoint
from rlpost.loop.setup import load_tokenizer
from rlpost.models import ModelNotFoundError
from tests.reliability.runs import QUICKSTART, rlpost, train

ROWS = [{"question": "What is 2 + 2?", "answer": "4"}, {"question": "What is 2 + 2? " * 40, "answer": "4"}]

# (overrides, text of the error line); {model} is the tiny model's folder, {tmp} the test's folder, where
# `broken_reward.py` does not compile, `no-weights/` holds only a model's config.json and `used/` another run's log.
USER_ERRORS = {
    "mistyped-config-key": (
        ["objective.clip_hihg=0.3"],
        f"invalid config ({QUICKSTART}): unknown key 'objective.clip_hihg' (did you mean 'clip_high'?)",
    ),
    "impossible-combination": (
        ["learner.backend=torch", "learner.zero_stage=2"],
        "learner.zero_stage = 2 needs learner.backend = deepspeed",
    ),
    "missing-model-path": (["model.path={tmp}/no-model"], "model path '{tmp}/no-model' does not exist"),
    "missing-data-file": (["model.path={model}", "data.train={tmp}/train.jsonl"], "data file {tmp}/train.jsonl does not exist"),
    "reward-file-that-does-not-import": (
        ["model.path={model}", "reward.functions=[{{name: '{tmp}/broken_reward.py:reward'}}]"],
        "reward '{tmp}/broken_reward.py:reward': importing {tmp}/broken_reward.py failed: line 1: SyntaxError",
    ),
    "prompts-per-step-over-the-rows": (
        ["model.path={model}", "data.arithmetic.train_size=3", "train.prompts_per_step=4"],
        "train.prompts_per_step = 4 is more than the 3 rows of data.train (arithmetic)",
    ),
    "model-folder-without-weights": (["model.path={tmp}/no-weights"], "model folder {tmp}/no-weights has no weight files"),
    "new-run-in-a-used-folder": (
        ["model.path={model}", "train.output_dir={tmp}/used", "train.resume=never"],
        "train.output_dir = {tmp}/used already holds a run (metrics.jsonl) and train.resume=never starts a new one",
    ),
}


@pytest.mark.parametrize("name", USER_ERRORS)
def test_cli_prints_one_error_line_without_traceback(name: str, tiny_chat_model_path: str, tmp_path: Path):
    (tmp_path / "broken_reward.py").write_text("def reward(prompt, completion:\n    return 1.0\n")
    (tmp_path / "no-weights").mkdir()
    shutil.copy(Path(tiny_chat_model_path) / "config.json", tmp_path / "no-weights")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "metrics.jsonl").write_text('{"step": 1}\n')
    overrides, expected = USER_ERRORS[name]
    run_dir = f"train.output_dir={tmp_path / 'run'}"
    result = train([run_dir, *(o.format(model=tiny_chat_model_path, tmp=tmp_path) for o in overrides)])
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [result.stderr.splitlines()[-1]], "one error line, the last one"
    assert expected.format(tmp=tmp_path) in errors[0]
    assert not (tmp_path / "run").exists(), "a run that fails its checks leaves no output folder"
    assert (tmp_path / "used" / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_checkpoint_of_another_config_is_refused_before_any_model_loads(tmp_path: Path):
    write_checkpoint(tmp_path / "checkpoints", 2, lambda folder: None, config_digest="another-config")
    # Complete by its file names (the pre-flight checks look no further), unloadable: loading it would fail.
    model = tmp_path / "never-loaded"
    model.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (model / name).write_text("not a model")
    result = train([f"train.output_dir={tmp_path}", f"model.path={model}"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        f"error: checkpoint {tmp_path}/checkpoints/ckpt-00000002 was written with a different config (digest another-config vs "
    )
    assert result.stderr.splitlines()[-1].endswith("start the new run in another train.output_dir")


def test_cli_debug_shows_the_traceback():
    result = rlpost("--debug", "train", "objective.clip_hihg=0.3")
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "rlpost.config.errors.ConfigError: invalid config" in result.stderr


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["blending.name=sasr", "learner.updates_per_batch=2"], "blending.name = sasr needs learner.updates_per_batch = 1, not 2"),
        (["learner.backend=torch", "learner.zero_stage=3"], "learner.zero_stage = 3 needs learner.backend = deepspeed"),
        (["rollout.n=1"], "rollout.n = 1 gives groups of one completion"),
    ],
)
def test_impossible_combinations_name_both_keys(overrides: list[str], expected: str):
    with pytest.raises(ConfigError) as error:
        load_config(QUICKSTART, overrides)
    assert expected in str(error.value)


def test_micro_batch_size_need_not_divide_the_batch():
    # The learner's last micro-batch is smaller and the update is the same: tests/learner/test_learner.py::
    # test_micro_batching_gives_the_same_update_as_one_batch (11 sequences in micro-batches of 3).
    config = load_config(QUICKSTART, ["train.prompts_per_step=3", "rollout.n=3", "learner.micro_batch_size=4"])
    assert config.train.prompts_per_step * config.rollout.n % config.learner.micro_batch_size != 0


def test_model_folder_without_tokenizer(tiny_model_path: str):
    with pytest.raises(ModelNotFoundError, match=rf"model.path: cannot load a tokenizer from '{tiny_model_path}'"):
        load_tokenizer(tiny_model_path)


@pytest.fixture(scope="module")
def tokenizer(tiny_chat_model_path: str):
    return AutoTokenizer.from_pretrained(tiny_chat_model_path)


def test_overlong_prompt_is_skipped_and_counted_or_an_error_naming_the_row(tokenizer):
    limit = DataConfig(max_prompt_tokens=100)
    assert build_training_prompts(ROWS, tokenizer, limit).skipped_overlong == 1
    with pytest.raises(DatasetError, match=r"row 2 \(prompt 'q-[0-9a-f]+'\) has \d+ tokens, over data.max_prompt_tokens = 100"):
        build_training_prompts(ROWS, tokenizer, limit.model_copy(update={"overlong_prompts": "error"}))


def test_no_prompt_left_after_the_length_filter(tokenizer):
    config = DataConfig(train="data.jsonl", max_prompt_tokens=5)
    with pytest.raises(DatasetError, match=r"data.jsonl: all 2 prompts are longer than data.max_prompt_tokens = 5"):
        build_training_prompts(ROWS, tokenizer, config)
