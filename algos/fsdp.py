"""FSDP2 (torch's ``fully_shard``): parameters, gradients and optimiser state sharded over the ranks.

For models whose weights, gradients and Adam state do not fit on one GPU. Each decoder layer and the
root of the model are sharded over a 1-D device mesh passed explicitly (``init_device_mesh`` on the
policy's device type: without it, ``fully_shard`` on a CUDA host would move CPU modules to the GPU
under gloo). A forward pass gathers one layer's weights at a time and frees them after it, so:

- every rank takes part in every forward pass: generation runs in lock-step (``synced_gpus``, ranks may
  finish at different lengths), evaluation runs on every rank, and the micro-batch counts of a step are
  the same on every rank (equal shares);
- the reference policy of full fine-tuning is a frozen copy sharded the same way, without optimiser
  state (under LoRA it is the adapter switched off; none is made when the algorithm needs none);
- saving gathers a full state dict on rank 0, which writes safetensors, and checkpoints are sharded
  (``torch.distributed.checkpoint``): no rank ever holds the whole optimiser state;
- micro-batches accumulate sharded gradients (a reduce-scatter after each micro-batch's backward), so a
  rank never holds a full copy of the gradients; ``unsharded_accumulation=True`` reduce-scatters once
  per step instead (``set_requires_gradient_sync``, FSDP2's ``no_sync``): less communication, at the cost
  of a full float32 copy of the gradients on every rank.

Gradients are reduce-scattered as a sum (the divide factor set to 1, in sum-only collectives, which gloo
needs), so the step's gradient is the one-process gradient of the whole batch; parameters that got no
gradient on a rank join the reduction with zeros (``set_reduce_scatter_unused_params``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor

from algos.engine import Engine, EngineError, Modules, _world

if TYPE_CHECKING:
    from algos.policy import Policy


class FSDP2Engine(Engine):
    """``fully_shard`` on each decoder layer and on the root of the policy's model (and of its reference copy),
    and on each extra trained module (a value head). ``bf16`` policies compute in bfloat16 with float32
    gradient reduction (``MixedPrecisionPolicy``); ``cpu_offload`` keeps the shards, their gradients and
    the optimiser state in CPU memory (``CPUOffloadPolicy``; the optimiser then steps on the CPU);
    ``unsharded_accumulation`` reduces a step's micro-batches once (see the module's docstring)."""

    name = "fsdp"

    def __init__(self, *, cpu_offload: bool = False, unsharded_accumulation: bool = False) -> None:
        super().__init__(*_world())
        self.cpu_offload, self.unsharded_accumulation = cpu_offload, unsharded_accumulation
        self._roots: list[FSDPModule] = []

    def prepare(self, policy: Policy, modules: Modules) -> Modules:
        if self._roots:
            raise EngineError("this FSDP2Engine already prepares an agent; give each agent its own engine")
        mesh = init_device_mesh(policy.device.type, (self.world_size,))
        offload = CPUOffloadPolicy() if self.cpu_offload else OffloadPolicy()
        layer = root = MixedPrecisionPolicy()
        if policy.bf16:
            layer = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            root = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                        output_dtype=torch.float32)
        shard_layer = partial(fully_shard, mesh=mesh, mp_policy=layer, offload_policy=offload)
        shard_root = partial(fully_shard, mesh=mesh, mp_policy=root, offload_policy=offload)
        self._roots.append(_shard_model(policy.model, shard_layer, shard_root))
        reference = policy._reference
        if reference is not None and not reference._adapter_off:
            _shard_model(reference.model, shard_layer, shard_root)  # frozen: no gradients, no optimiser state
        for module in modules.values():
            _broadcast(module)
            shard_root(module)
            self._roots.append(module)
        for root_module in self._roots:
            root_module.set_reduce_scatter_unused_params(True)
            for sharded in root_module.modules():
                if isinstance(sharded, FSDPModule):
                    sharded.set_gradient_divide_factor(1.0)  # a sum: each rank's loss is its part of the step's
                    sharded.set_force_sum_reduction_for_comms(True)
        for view in (policy, reference):
            if view is not None:
                view.sharded = True
        return modules

    def accumulating(self, sync: bool) -> contextlib.AbstractContextManager[None]:
        return self._without_sync() if self.unsharded_accumulation and not sync else contextlib.nullcontext()

    @contextlib.contextmanager
    def _without_sync(self) -> Iterator[None]:
        """Accumulate unsharded gradients without reduce-scattering them (FSDP2's ``no_sync``)."""
        for root_module in self._roots:
            root_module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            for root_module in self._roots:
                root_module.set_requires_gradient_sync(True)

    def clip_and_step(self, optimizer: torch.optim.Optimizer, max_norm: float) -> float:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)  # the norm over all shards, on every rank
        optimizer.step()
        return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)

    def full_state_dict(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Gathered shard by shard into CPU memory on rank 0 (the others get {})."""
        return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_full_state_dict(self, module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True))


def _shard_model(model: torch.nn.Module, shard_layer: Callable[[torch.nn.Module], object],
                 shard_root: Callable[[torch.nn.Module], object]) -> FSDPModule:
    """Shard each decoder layer (the classes HF names in ``_no_split_modules``) and, when they are not tied,
    the input and output embeddings on their own (a large vocabulary's tables are then gathered only while
    they run: the root's weights stay gathered through the whole step), then the root."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise EngineError(f"FSDP2 shards a model layer by layer, but {type(model).__name__} names no decoder layer "
                          f"class in _no_split_modules ({sorted(names)})")
    embeddings = [model.get_input_embeddings(), model.get_output_embeddings()]
    if None not in embeddings and embeddings[0].weight is not embeddings[1].weight:
        layers += embeddings
    _broadcast(model)
    for module in layers:
        shard_layer(module)
    shard_root(model)
    return model  # type: ignore[return-value]


def _broadcast(module: torch.nn.Module) -> None:
    """Rank 0's weights on every rank before sharding (as DDP's construction does), so that shards agree."""
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)
