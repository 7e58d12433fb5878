"""Two DeepSpeed learner ranks (gloo, spawned processes) on the tiny model: ZeRO-3 weight export,
step metrics reduced over the ranks, and VCPO's ESS learning-rate scale taken over every rank's data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlpost.config.schema import RLPostConfig
from rlpost.learner.batch import TrainBatch, build_train_batch, prepare_update
from rlpost.learner.distributed import listening_socket, sum_over_ranks
from rlpost.learner.learner import Learner
from rlpost.objectives.registry import get_objective
from tests.conftest import make_groups

WORLD = 2
GROUPS = {"num_groups": 4, "sizes": [4, 3, 4, 5], "seed": 7}


def _config(tiny_model_path: str, objective: dict, **learner) -> RLPostConfig:
    return RLPostConfig.model_validate(
        {
            "model": {"path": tiny_model_path},
            "learner": {"backend": "deepspeed", "mixed_precision": "no", "micro_batch_size": 3, **learner},
            # eps >> |grad|: Adam's first step ~ lr * grad, linear in the gradient, so ranks and stages
            # that sum gradients in another order still land on the same weights to float rounding.
            "optimizer": {"lr": 1.0, "eps": 1.0, "grad_clip": None},
            "rollout": {"max_new_tokens": 8},
            "objective": objective,
        }
    )


# vcpo.is_threshold null: the loss is GRPO's (a real gradient), while the ESS of the engine's
# log-probs (-1 per token, far from the tiny model's ~-4.8) drives the learning-rate scale.
VCPO = {"name": "vcpo", "kl_coef": 0.05, "entropy_coef": 0.01, "vcpo": {"is_threshold": None}}
GRPO = {"name": "grpo"}


def _learner(config: RLPostConfig) -> tuple[Learner, object]:
    torch.manual_seed(0)
    objective = get_objective(config.objective.name)(config.objective, config.rollout.max_new_tokens)
    return Learner(config, config.model.path, objective, total_steps=1), objective


def _batch() -> TrainBatch:
    return build_train_batch(make_groups(**GROUPS), pad_token_id=0)


def _shard(batch: TrainBatch, rank: int) -> torch.Tensor:
    """This rank's rows, split as the Ray driver splits a batch."""
    return torch.arange(batch.size).tensor_split(WORLD)[rank]


def _weights(learner: Learner) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in learner.named_weights()}


def _train_shard(learner: Learner, objective, rank: int) -> dict[str, float]:
    batch = _batch()
    targets = prepare_update(objective, batch)  # advantages need whole groups: computed on the whole batch
    rows = _shard(batch, rank)
    targets.advantages = targets.advantages[rows]
    return learner.train_step(batch.select(rows), targets)


class _RecordingGather:
    """Wraps deepspeed.zero.GatheredParameters, recording how many parameters each gather holds."""

    def __init__(self, original):
        self.original = original
        self.sizes: list[int] = []

    def __call__(self, params, *args, **kwargs):
        self.sizes.append(len(list(params)))
        return self.original(params, *args, **kwargs)


def _zero3_export(tiny_model_path: str) -> dict:
    import deepspeed
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    learner, objective = _learner(_config(tiny_model_path, GRPO, zero_stage=3))
    params = list(learner.module.parameters())
    recorder = _RecordingGather(deepspeed.zero.GatheredParameters)
    deepspeed.zero.GatheredParameters = recorder
    try:
        initial, still_gathered = {}, 0
        for name, tensor in learner.named_weights():
            initial[name] = tensor.clone()
            # Between two yields no parameter is held gathered: the full model is never assembled.
            still_gathered += sum(p.ds_status != ZeroParamStatus.NOT_AVAILABLE for p in params)
    finally:
        deepspeed.zero.GatheredParameters = recorder.original
    metrics = _train_shard(learner, objective, int(os.environ["RANK"]))
    return {"initial": initial, "gather_sizes": recorder.sizes, "still_gathered": still_gathered,
            "shard_numel": sum(p.ds_tensor.numel() for p in params), "full_numel": sum(p.ds_numel for p in params),
            "trained": _weights(learner), "metrics": metrics}


def _zero0_export(tiny_model_path: str) -> dict:
    learner, objective = _learner(_config(tiny_model_path, GRPO, zero_stage=0))
    metrics = _train_shard(learner, objective, int(os.environ["RANK"]))
    return {"trained": _weights(learner), "metrics": metrics}


def _vcpo(tiny_model_path: str) -> dict:
    rank = int(os.environ["RANK"])
    learner, objective = _learner(_config(tiny_model_path, VCPO, zero_stage=0))
    batch = _batch()
    shard = batch.select(_shard(batch, rank))
    # The policy's log-probs before the step: what lr_scale sees inside train_step.
    logp = learner.frozen_logprobs(learner.module, shard)
    metrics = _train_shard(learner, objective, rank)
    return {"metrics": metrics, "logp": logp, "behaviour_logp": shard.behaviour_logp, "mask": shard.response_mask,
            "trained": _weights(learner)}


def _rank_main(rank: int, port: int, tiny_model_path: str, out_dir: str) -> None:
    # A launcher-style env:// rendezvous (torchrun and the deepspeed launcher set these).
    os.environ.update(RANK=str(rank), LOCAL_RANK="0", WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    results = {"zero3": _zero3_export(tiny_model_path), "zero0": _zero0_export(tiny_model_path), "vcpo": _vcpo(tiny_model_path)}
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")


# Uneven shards: 9 rows on 2 ranks (5 and 4). (zero stage, updates per batch, micro-batch size) per run.
UNEVEN = {"zero0-4-updates": (0, 4, 3), "zero0-2-updates": (0, 2, 2), "zero3-2-updates": (3, 2, 2)}


def _uneven(tiny_model_path: str, zero_stage: int, updates: int, micro_batch_size: int) -> dict:
    rank = int(os.environ["RANK"])
    config = _config(tiny_model_path, GRPO, zero_stage=zero_stage, updates_per_batch=updates, micro_batch_size=micro_batch_size)
    learner, objective = _learner(config)
    batch = build_train_batch(make_groups(3, sizes=[3, 3, 3], seed=11), pad_token_id=0)
    targets = prepare_update(objective, batch)
    rows = torch.arange(batch.size).tensor_split(WORLD)[rank]
    targets.advantages = targets.advantages[rows]
    torch.manual_seed(1)  # the rows' shuffle, the same whatever loading drew from the generator
    metrics = learner.train_step(batch.select(rows), targets)
    return {"rows": len(rows), "steps": learner.steps_taken, "metrics": metrics, "trained": _weights(learner)}


def _uneven_main(rank: int, port: int, tiny_model_path: str, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK="0", WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    results = {name: _uneven(tiny_model_path, *settings) for name, settings in UNEVEN.items()}
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")


def _spawn(main, tiny_model_path: str, out_dir: Path) -> list[dict]:
    import torch.multiprocessing as mp

    with listening_socket("127.0.0.1") as probe:
        port = probe.getsockname()[1]
    mp.spawn(main, args=(port, tiny_model_path, str(out_dir)), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]


@pytest.fixture(scope="module")
def uneven_ranks(tiny_model_path, tmp_path_factory) -> list[dict]:
    pytest.importorskip("deepspeed")
    return _spawn(_uneven_main, tiny_model_path, tmp_path_factory.mktemp("uneven"))


@pytest.mark.slow
@pytest.mark.deepspeed
@pytest.mark.parametrize("name", list(UNEVEN))
def test_uneven_shards_run_the_same_updates_on_every_rank(uneven_ranks, tiny_model_path, name) -> None:
    _, updates, _ = UNEVEN[name]
    first, second = (rank[name] for rank in uneven_ranks)
    assert (first["rows"], second["rows"]) == (5, 4)
    assert first["steps"] == second["steps"] == updates
    assert set(first["metrics"]) == set(second["metrics"])
    initial = _initial_weights(tiny_model_path)
    assert max(float((first["trained"][n] - t).abs().max()) for n, t in initial.items()) > 1e-3
    for weight_name, tensor in first["trained"].items():  # the gradients were all-reduced at every step
        assert torch.equal(tensor, second["trained"][weight_name]), weight_name


@pytest.mark.slow
@pytest.mark.deepspeed
def test_padding_micro_batches_of_uneven_zero3_shards_add_no_gradient(uneven_ranks) -> None:
    # ZeRO-3: the rank with fewer micro-batches runs extra ones at weight 0 (each forward is a collective).
    for rank in uneven_ranks:
        zero0, zero3 = rank["zero0-2-updates"]["trained"], rank["zero3-2-updates"]["trained"]
        for weight_name, tensor in zero0.items():
            torch.testing.assert_close(zero3[weight_name], tensor, rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def two_ranks(tiny_model_path, tmp_path_factory) -> list[dict]:
    pytest.importorskip("deepspeed")
    return _spawn(_rank_main, tiny_model_path, tmp_path_factory.mktemp("ranks"))


def _initial_weights(tiny_model_path: str) -> dict[str, torch.Tensor]:
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(tiny_model_path).state_dict()


@pytest.mark.slow
@pytest.mark.deepspeed
def test_zero3_export_gathers_one_parameter_at_a_time_and_yields_full_weights(two_ranks, tiny_model_path) -> None:
    initial = _initial_weights(tiny_model_path)
    for rank in two_ranks:
        zero3 = rank["zero3"]
        assert 0 < zero3["shard_numel"] < zero3["full_numel"], "each ZeRO-3 rank holds only its shard of the parameters"
        assert zero3["gather_sizes"] and set(zero3["gather_sizes"]) == {1}
        assert len(zero3["gather_sizes"]) == len(zero3["initial"])
        assert zero3["still_gathered"] == 0
        assert list(zero3["initial"]) == list(initial)
        for name, tensor in initial.items():
            assert torch.equal(zero3["initial"][name], tensor), name


@pytest.mark.slow
@pytest.mark.deepspeed
def test_zero3_export_after_an_update_matches_zero0(two_ranks, tiny_model_path) -> None:
    initial = _initial_weights(tiny_model_path)
    reference = two_ranks[0]["zero0"]["trained"]
    moved = max(float((reference[name] - initial[name]).abs().max()) for name in initial)
    assert moved > 1e-3, "the update must change the weights for the comparison to mean anything"
    for rank in two_ranks:
        exported = rank["zero3"]["trained"]
        assert list(exported) == list(initial)
        for name in initial:
            torch.testing.assert_close(exported[name], reference[name], rtol=1e-5, atol=1e-7)
    for name in initial:  # both ranks take part in every gather and get the same full tensor
        assert torch.equal(two_ranks[0]["zero3"]["trained"][name], two_ranks[1]["zero3"]["trained"][name])


@pytest.mark.slow
@pytest.mark.deepspeed
def test_metrics_are_reduced_over_ranks_and_match_one_rank_on_the_whole_batch(two_ranks, tiny_model_path) -> None:
    # The same step on one process with the whole batch (torch backend, no process group).
    learner, objective = _learner(_config(tiny_model_path, VCPO, backend="torch"))
    batch = _batch()
    whole = learner.train_step(batch, prepare_update(objective, batch))
    for key in ("actor/loss", "actor/pg_loss", "actor/kl_loss", "actor/entropy", "actor/grad_norm", "actor/lr",
                "staleness/ess_lr_scale", "staleness/minibatch_ess"):
        assert key in whole, key
    for rank in two_ranks:
        metrics = rank["vcpo"]["metrics"]
        assert set(metrics) == set(whole)
        for key, value in whole.items():
            assert metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


@pytest.mark.slow
@pytest.mark.deepspeed
def test_vcpo_lr_scale_comes_from_every_rank_so_ranks_stay_identical(two_ranks, tiny_model_path) -> None:
    objective = get_objective("vcpo")(_config(tiny_model_path, VCPO).objective, 8)
    ranks = [rank["vcpo"] for rank in two_ranks]
    local = [objective.lr_scale({key: r[key] for key in ("logp", "behaviour_logp", "mask")})[0] for r in ranks]
    assert abs(local[0] - local[1]) > 0.05, f"the shards' own ESS must differ for the test to mean anything: {local}"

    def padded(key: str) -> torch.Tensor:
        width = max(r[key].shape[1] for r in ranks)
        return torch.cat([torch.nn.functional.pad(r[key], (0, width - r[key].shape[1])) for r in ranks])

    whole, _ = objective.lr_scale({key: padded(key) for key in ("logp", "behaviour_logp", "mask")})
    assert 0 < whole < 1
    applied = [r["metrics"]["staleness/ess_lr_scale"] for r in ranks]
    assert applied[0] == applied[1] == pytest.approx(whole, rel=1e-9)
    assert ranks[0]["metrics"]["actor/lr"] == ranks[1]["metrics"]["actor/lr"]
    for name, tensor in ranks[0]["trained"].items():
        assert torch.equal(tensor, ranks[1]["trained"][name]), name


def test_sum_over_ranks_adds_every_key() -> None:
    summed = sum_over_ranks([{"actor/loss": 0.25, "actor/pg_clipfrac": 0.1}, {"actor/loss": 0.5, "extra": 1.0}])
    assert summed == {"actor/loss": 0.75, "actor/pg_clipfrac": 0.1, "extra": 1.0}


def test_a_group_of_one_listens_on_loopback_only() -> None:
    script = (
        "import json, psutil\n"
        "from rlpost.learner.distributed import ensure_process_group\n"
        "before = {c.laddr for c in psutil.Process().net_connections('tcp') if c.status == psutil.CONN_LISTEN}\n"
        "ensure_process_group()\n"
        "opened = {c.laddr for c in psutil.Process().net_connections('tcp') if c.status == psutil.CONN_LISTEN} - before\n"
        "assert opened, 'the store must listen somewhere'\n"
        "print(json.dumps(sorted(a.ip for a in opened)))\n"
    )
    env = {key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert set(json.loads(result.stdout.strip().splitlines()[-1])) == {"127.0.0.1"}
