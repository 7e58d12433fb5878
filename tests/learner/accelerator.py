"""A simulated accelerator for device-placement tests on a machine without a GPU.

`OnAccelerator` tensors hold real CPU data but live on the device `accel:0` (torch's PrivateUse1
backend, registered from Python with a device guard), and any op that mixes one with a CPU tensor of
one or more dimensions raises the error CUDA raises ("Expected all tensors to be on the same
device"); 0-dim CPU tensors mix freely, as CPU scalars do with CUDA tensors. Inside
`SimulatedAccelerator` (a dispatch mode) `.to(DEVICE)` and factories given that device make such
tensors, and `.cpu()` / `.item()` bring the data back.

Why not `FakeTensorMode` with `cuda:0` tensors: the learner's forward takes data-dependent steps
(`nonzero`, `.item()`) that fake tensors cannot, and a CPU-only torch build has no device guard for
`cuda`, so even a fake `cuda:0` `linear` aborts the process.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.backend_registration import _DummyBackendModule, _setup_privateuseone_for_python_backend

NAME = "accel"


class _BackendModule(_DummyBackendModule):
    """`torch.accel`: what torch asks of a device module (autocast asks for its dtypes)."""

    def get_amp_supported_dtype(self) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16]

    # torch.random.fork_rng (used by torch.library.opcheck, activation checkpointing, ...) saves and
    # restores the generator of every registered backend. The simulated device draws from the CPU's
    # generator, which fork_rng saves and restores itself: here there is nothing more to keep.
    def get_rng_state(self, device: object = None) -> torch.Tensor:
        del device
        return torch.get_rng_state()

    def set_rng_state(self, state: torch.Tensor, device: object = None) -> None:
        del state, device


if torch._C._get_privateuse1_backend_name() != NAME:
    _setup_privateuseone_for_python_backend(NAME, backend_module=_BackendModule())
DEVICE = torch.device(NAME, 0)
MISMATCH = "Expected all tensors to be on the same device"


class OnAccelerator(torch.Tensor):
    """CPU data presented as living on `DEVICE`."""

    @staticmethod
    def __new__(cls, data: torch.Tensor):
        tensor = torch.Tensor._make_wrapper_subclass(
            cls, data.shape, strides=data.stride(), storage_offset=data.storage_offset(), dtype=data.dtype, device=DEVICE
        )
        tensor.cpu_data = data
        return tensor

    def __repr__(self) -> str:
        return f"OnAccelerator({self.cpu_data!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


def _unwrap(x):
    return x.cpu_data if isinstance(x, OnAccelerator) else x


def _run(func, args, kwargs):
    """`func` on the CPU data; the result on the accelerator when an input was, or `device=` names it."""
    tensors = [x for x in tree_flatten((args, kwargs))[0] if isinstance(x, torch.Tensor)]
    on_accelerator = any(isinstance(x, OnAccelerator) for x in tensors)
    if on_accelerator and any(not isinstance(x, OnAccelerator) and x.dim() > 0 for x in tensors):
        raise RuntimeError(f"{MISMATCH}, but found at least two devices, {DEVICE} and cpu! ({func})")
    target = kwargs.get("device")
    if target is not None:
        kwargs = {**kwargs, "device": torch.device("cpu")}
        on_accelerator = torch.device(target).type == NAME
    out = func(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs))
    return tree_map(lambda x: OnAccelerator(x) if on_accelerator and type(x) is torch.Tensor else x, out)


class SimulatedAccelerator(TorchDispatchMode):
    """Every op runs on the CPU; tensors of `DEVICE` come out as `OnAccelerator`."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


# Tensors built below the dispatch mode (`torch.tensor(..., device=DEVICE)`) reach the backend itself.
def _copy_from(src: torch.Tensor, dst: torch.Tensor, non_blocking: bool = False) -> torch.Tensor:
    _unwrap(dst).copy_(_unwrap(src))
    return dst


_backend = torch.library.Library("aten", "IMPL")
_backend.impl(
    "empty_strided",
    lambda size, stride, dtype=None, layout=None, device=None, pin_memory=None:
        OnAccelerator(torch.empty_strided(size, stride, dtype=dtype)),
    "PrivateUse1",
)
_backend.impl(
    "empty.memory_format",
    lambda size, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None:
        OnAccelerator(torch.empty(size, dtype=dtype)),
    "PrivateUse1",
)
_backend.impl("_copy_from", _copy_from, "PrivateUse1")


def place_on_accelerator(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with every parameter and buffer on the accelerator, tied weights still tied
    (`Module.to` would untie them here: it replaces each module's parameters separately)."""
    moved: dict[int, torch.nn.Parameter] = {}
    for module in model.modules():
        for name, param in module._parameters.items():
            if param is not None and id(param) not in moved:
                moved[id(param)] = torch.nn.Parameter(OnAccelerator(param.detach().clone()), requires_grad=param.requires_grad)
            if param is not None:
                module._parameters[name] = moved[id(param)]
        for name, buffer in module._buffers.items():
            if buffer is not None:
                module._buffers[name] = OnAccelerator(buffer.clone())
    return model
