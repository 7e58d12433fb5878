"""`preflight(config)`: the cheap checks before any model, engine or worker starts, in this process.

Each names the key, file, row or reward at fault, and none creates a folder or touches a user's file.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from rlpost.config import ConfigError, load_config
from rlpost.io.checkpoint import CheckpointError
from rlpost.models import ModelFolderError, ModelNotFoundError, check_model_folder, fetch_builtin
from rlpost.preflight import preflight, run_checks
from rlpost.rewards import RewardFunctionError
from tests.reliability.runs import QUICKSTART

REWARDS = '''
def needs_difficulty(prompt, completion, *, answer, difficulty):
    return 1.0

def kills_its_process(prompt, completion, **row):
    import os
    os._exit(3)
'''


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"question": f"What is {a} + 1?", "answer": str(a + 1)}) + "\n" for a in range(3)))
    return path


def config(tmp_path: Path, model: str, *overrides: str):
    return load_config(QUICKSTART, [
        f"model.path={model}", "data.test=null", "train.prompts_per_step=2", "learner.backend=torch",
        f"train.output_dir={tmp_path / 'run'}", *overrides,
    ])


def only_reward(spec: str) -> list[str]:
    return [f"reward.functions=[{{name: '{spec}'}}]", "reward.correct_reward=null"]


def test_a_valid_config_passes_and_creates_nothing(tiny_chat_model_path: str, data_file: Path, tmp_path: Path):
    summary = run_checks(config(tmp_path, tiny_chat_model_path, f"data.train={data_file}"))
    assert summary.line() == f"ok: 3 train rows; model {tiny_chat_model_path}; rewards math_verify, boxed_format"
    assert not (tmp_path / "run").exists()


def test_prompts_per_step_over_the_rows(tiny_chat_model_path: str, data_file: Path, tmp_path: Path):
    with pytest.raises(ConfigError, match=(
        rf"train.prompts_per_step = 4 is more than the 3 rows of data.train \({data_file}\): "
        "lower train.prompts_per_step or use more data"
    )):
        preflight(config(tmp_path, tiny_chat_model_path, f"data.train={data_file}", "train.prompts_per_step=4"))


def test_model_folder_without_weights_or_tokenizer(tiny_model_path: str, tmp_path: Path):
    with pytest.raises(ModelNotFoundError, match=rf"model folder {tiny_model_path} has no tokenizer files"):
        preflight(config(tmp_path, tiny_model_path))
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(Path(tiny_model_path) / "config.json", no_weights)
    with pytest.raises(ModelNotFoundError, match=rf"model folder {no_weights} has no weight files"):
        preflight(config(tmp_path, str(no_weights)))


def test_weight_shard_named_in_the_index_is_missing(tiny_model_path: str, tmp_path: Path):
    folder = tmp_path / "sharded"
    shutil.copytree(tiny_model_path, folder)
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelNotFoundError, match="weight files model-00001-of-00002.safetensors, model-00002-of-00002"):
        check_model_folder(folder)


def test_tracker_not_installed_is_named_before_anything_loads(tiny_chat_model_path: str, tmp_path: Path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    with pytest.raises(ConfigError, match=(
        r"logging.wandb_project = 'demo' needs wandb, which is not installed: pip install 'rlpost\[wandb\]'"
    )):
        preflight(config(tmp_path, "/never/loaded", "logging.wandb_project=demo"))


@pytest.mark.parametrize(
    ("package", "overrides", "setting"),
    [
        ("vllm", ["rollout.engine=vllm"], "rollout.engine = vllm"),
        ("deepspeed", ["learner.backend=deepspeed"], "learner.backend = deepspeed"),
        ("ray", ["cluster.runtime=ray"], "cluster.runtime = ray"),
    ],
)
def test_missing_extra_is_named(package: str, overrides: list[str], setting: str, tmp_path: Path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else find_spec(name, *a))
    with pytest.raises(ConfigError, match=rf"{setting} needs {package}, which is not installed: pip install"):
        preflight(config(tmp_path, "/never/loaded", *overrides))


def test_cuda_device_without_a_gpu(tmp_path: Path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ConfigError, match="cluster.device = cuda, but this machine has no usable CUDA GPU"):
        preflight(config(tmp_path, "/never/loaded", "cluster.runtime=ray", "cluster.device=cuda"))


def test_reward_that_cannot_take_the_rows_fields_is_an_error(tiny_chat_model_path: str, data_file: Path, tmp_path: Path):
    (tmp_path / "rewards.py").write_text(REWARDS)
    spec = f"{tmp_path / 'rewards.py'}:needs_difficulty"
    with pytest.raises(RewardFunctionError, match=(
        rf"reward '{spec}' cannot be called with the fields of row 1 of data.train \(.*difficulty.*\); "
        "the row has fields: question, answer"
    )):
        preflight(config(tmp_path, tiny_chat_model_path, f"data.train={data_file}", *only_reward(spec)))


def test_rewards_are_checked_without_being_called(tiny_chat_model_path: str, data_file: Path, tmp_path: Path):
    # A reward may kill or hang its process, or change files: only a worker process runs it, under a timeout.
    (tmp_path / "rewards.py").write_text(REWARDS)
    spec = f"{tmp_path / 'rewards.py'}:kills_its_process"
    summary = run_checks(config(tmp_path, tiny_chat_model_path, f"data.train={data_file}", *only_reward(spec)))
    assert summary.rewards == [spec]


def test_correct_reward_and_empty_reward_list(tiny_chat_model_path: str, data_file: Path, tmp_path: Path):
    with pytest.raises(RewardFunctionError, match="reward.correct_reward = 'boxed' is not among reward.functions: math_verify, boxed_format"):
        preflight(config(tmp_path, tiny_chat_model_path, f"data.train={data_file}", "reward.correct_reward=boxed"))
    with pytest.raises(RewardFunctionError, match="reward.functions is empty"):
        preflight(config(tmp_path, tiny_chat_model_path, f"data.train={data_file}", "reward.functions=[]"))


def test_new_run_in_a_used_folder_is_refused_and_its_files_kept(tiny_chat_model_path: str, tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    (run / "config.yaml").write_text("old: run\n")
    with pytest.raises(CheckpointError, match=rf"train.output_dir = {run} already holds a run \(metrics.jsonl, config.yaml\)"):
        preflight(config(tmp_path, tiny_chat_model_path, "train.resume=never"))
    assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n' and (run / "config.yaml").read_text() == "old: run\n"


def test_cluster_address_and_output_dir_that_is_a_file(tiny_chat_model_path: str, tmp_path: Path):
    with pytest.raises(ConfigError, match="cluster.address = 'head-node': expected 'auto' or host:port"):
        preflight(config(tmp_path, tiny_chat_model_path, "cluster.address=head-node"))
    (tmp_path / "file").write_text("mine")
    with pytest.raises(ConfigError, match=rf"train.output_dir = {tmp_path / 'file'} is a file, not a folder"):
        preflight(config(tmp_path, tiny_chat_model_path, f"train.output_dir={tmp_path / 'file'}"))


def test_model_fetch_never_deletes_a_users_folder(tmp_path: Path, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("a refused fetch downloads nothing")

    monkeypatch.setattr("rlpost.models.subprocess.run", no_download)
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(ModelFolderError, match=rf"--to {target}: the folder is not empty and holds no complete model"):
        fetch_builtin("smollm2-135m-instruct", target)
    assert (target / "notes.txt").read_text() == "keep me"
    with pytest.raises(ModelFolderError, match=rf"--to {target / 'notes.txt'}: a file, not a folder"):
        fetch_builtin("smollm2-135m-instruct", target / "notes.txt")


def test_a_config_that_passed_is_still_refused_once_its_folder_holds_a_run(tiny_chat_model_path: str, tmp_path: Path):
    checked = config(tmp_path, tiny_chat_model_path, "train.resume=never")
    preflight(checked)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("old: run\n")
    with pytest.raises(CheckpointError, match="already holds a run"):
        preflight(checked)


def test_report_to_a_tracker_that_is_not_installed_is_named_before_anything_loads(tmp_path: Path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else find_spec(name, *a))
    with pytest.raises(ConfigError, match=(
        r"logging.report_to = \[jsonl, mlflow\] needs mlflow, which is not installed: pip install mlflow"
    )):
        preflight(config(tmp_path, "/never/loaded", "logging.report_to=[jsonl, mlflow]"))
    assert not (tmp_path / "run").exists()


@pytest.fixture
def fake_hub(tiny_chat_model_path: str, tmp_path: Path, monkeypatch) -> list[dict]:
    """`snapshot_download` answering from a local copy of a model; the calls it received."""
    import huggingface_hub

    calls: list[dict] = []

    def snapshot_download(repo_id: str, **kwargs) -> str:
        calls.append({"repo_id": repo_id, **kwargs})
        folder = Path(kwargs["local_dir"]) if kwargs.get("local_dir") else tmp_path / "hub-cache" / repo_id
        shutil.copytree(tiny_chat_model_path, folder, dirs_exist_ok=True)
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_hub_id_resolves_through_snapshot_download_of_safetensors(fake_hub: list[dict], tmp_path: Path):
    from rlpost.models import resolve_model

    folder = resolve_model("org/tiny-chat")
    assert folder == str(tmp_path / "hub-cache" / "org" / "tiny-chat")
    (call,) = fake_hub
    assert call["repo_id"] == "org/tiny-chat" and call["local_files_only"] is False and call["local_dir"] is None
    assert {"config.json", "*.safetensors", "tokenizer*"} <= set(call["allow_patterns"])
    assert not any(pattern.endswith((".bin", ".gguf")) for pattern in call["allow_patterns"])


def test_local_folder_is_used_as_it_is_and_a_hub_model_without_safetensors_is_named(
        fake_hub: list[dict], tiny_chat_model_path: str, monkeypatch):
    import huggingface_hub

    from rlpost.models import resolve_model

    assert resolve_model(tiny_chat_model_path) == tiny_chat_model_path and not fake_hub
    copy = huggingface_hub.snapshot_download

    def without_safetensors(repo_id: str, **kwargs) -> str:
        folder = Path(copy(repo_id, **kwargs))
        for weights in folder.glob("*.safetensors"):
            weights.unlink()
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", without_safetensors)
    with pytest.raises(ModelNotFoundError, match="'org/bin-only' publishes no safetensors weights"):
        resolve_model("org/bin-only")


def test_model_fetch_of_a_hub_id_fills_only_a_new_folder(fake_hub: list[dict], tmp_path: Path):
    from rlpost.models import fetch_model

    target = fetch_model("org/tiny-chat", tmp_path / "models" / "tiny")
    check_model_folder(target, tokenizer=True)
    assert fake_hub[0]["local_dir"] != target  # written beside it, then renamed into place
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("keep me")
    with pytest.raises(ModelFolderError, match="not empty"):
        fetch_model("org/tiny-chat", tmp_path / "used")
    assert [path.name for path in (tmp_path / "used").iterdir()] == ["notes.txt"]
