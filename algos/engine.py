"""How a training step runs: on one process (:class:`Engine`), or data-parallel over several
(:class:`DDPEngine`; :class:`algos.fsdp.FSDP2Engine` shards the model as well).

An engine is injected into :class:`algos.Agent` and owns everything that depends on the number of
processes, so algorithm files and losses never see ranks: preparing the trained modules (wrapping or
sharding them), the accumulation context of micro-batches, backward, clip-and-step, the collectives
(gather, sums, gather -> compute -> slice of batch statistics), full and sharded state dicts, and who
writes. On one process every collective is the identity, so one process computes bitwise as code
without ranks.

Data-parallel runs are exact. Each rank owns a contiguous share of every step's prompt groups (all G
samples of a prompt on one rank, so group statistics do not change); losses are normalised by the
totals of the whole step summed over ranks, and gradients are *summed* over ranks (the engines undo
DDP's and FSDP's averaging once, in their reduction), so W processes compute the gradient one process
computes on the whole batch, up to the order of float sums.

The process group is started by the launcher's caller, never by an Agent: ``python -m algos.train``
calls :func:`init_process_group` (from the environment ``torchrun`` and ``accelerate launch`` set), as
a user's script does before making an agent.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor

if TYPE_CHECKING:
    from algos.policy import Policy

Modules = dict[str, torch.nn.Module]


class EngineError(RuntimeError):
    """The processes are set up wrongly for the engine asked for; the message says what to do."""


def device() -> torch.device:
    """This process's device: its local GPU (``LOCAL_RANK``) when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def init_process_group() -> None:
    """Start the process group from the launcher's environment (``WORLD_SIZE`` > 1) unless one is running:
    NCCL for CUDA tensors and gloo for CPU ones on a GPU host, gloo alone on a CPU host."""
    if not dist.is_available() or dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(device())
    dist.init_process_group("cuda:nccl,cpu:gloo" if torch.cuda.is_available() else "gloo")


def close() -> None:
    """End the process group (before a launched process exits)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def make_engine(name: str = "ddp", **options: Any) -> Engine:
    """The engine an Agent uses when none is injected: one process alone, else ``name`` ("ddp" or "fsdp")
    over the started process group."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        if name == "ddp":
            return DDPEngine(**options)
        if name == "fsdp":
            from algos.fsdp import FSDP2Engine

            return FSDP2Engine(**options)
        raise EngineError(f"unknown engine {name!r}; choose 'ddp' or 'fsdp'")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise EngineError(f"this process is one of {os.environ['WORLD_SIZE']} launched ones but no process group "
                          f"is started: call algos.engine.init_process_group() before making the agent "
                          f"(python -m algos.train does)")
    return Engine()


def _world() -> tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        raise EngineError("a data-parallel engine needs a started process group: launch with torchrun or "
                          "accelerate launch and call algos.engine.init_process_group() first")
    return dist.get_rank(), dist.get_world_size()


class Engine:
    """One process (the default): every collective is the identity and nothing is wrapped.

    It is also the base of the data-parallel engines, which override how modules are prepared, how
    micro-batches accumulate and how state dicts are taken. ``rank`` and ``world_size`` may be given
    to compute shares as a rank of a larger run would (tests do), without any collective.
    """

    name = "local"

    def __init__(self, rank: int = 0, world_size: int = 1):
        self.rank, self.world_size = rank, world_size

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes logs, checkpoint metadata and saved agents."""
        return self.rank == 0

    # --- shares of a step ----------------------------------------------------------------------
    def share(self, n: int, what: str = "items") -> slice:
        """This rank's contiguous share of ``n`` items; ``n`` must split evenly."""
        if n % self.world_size:
            raise ValueError(f"{n} {what} cannot be split evenly over {self.world_size} processes: "
                             f"use a multiple of {self.world_size}")
        size = n // self.world_size
        return slice(self.rank * size, (self.rank + 1) * size)

    def shard(self, env: Any) -> Any:
        """A view of a batched env whose ``sample`` keeps this rank's share of what every rank draws."""
        return env if self.world_size == 1 else _ShardedEnv(env, self)

    def offset_of_share(self, local_count: int) -> int:
        """Index in the step's batch of this rank's first item, when every rank holds ``local_count`` of them."""
        return self.rank * local_count

    # --- model and optimiser -------------------------------------------------------------------
    def prepare(self, policy: Policy, modules: Modules) -> Modules:
        """Make the policy's model (and its reference copy) and the extra trained ``modules`` ready to train
        here; returns the modules to call in forward passes, by name (a wrapper where the engine needs one).
        Called once, before the optimiser is made over the parameters."""
        return modules

    def accumulating(self, sync: bool) -> contextlib.AbstractContextManager[None]:
        """The context of one micro-batch's forward and backward: ``sync`` on the step's last micro-batch,
        whose backward reduces the accumulated gradients over ranks (the others only accumulate)."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_and_step(self, optimizer: torch.optim.Optimizer, max_norm: float) -> float:
        """Clip the gradient norm to ``max_norm``, step the optimiser; returns the norm before clipping."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        optimizer.step()
        return float(norm)

    # --- collectives (every rank calls them in the same order) --------------------------------
    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's rows of ``tensor`` concatenated in rank order, on every rank. Ranks may differ in rows
        and in width (the sizes past the first); narrower rows are padded with zeros to the widest."""
        return tensor if self.world_size == 1 else _gather_rows(tensor)[0]

    def over_batch(self, fn: Callable[..., Any], *tensors: torch.Tensor) -> Any:
        """``fn(*tensors)`` as if this rank held the step's whole batch: gather every rank's rows, run ``fn`` on
        the whole batch, keep this rank's rows (as TRL does with rewards and advantages).

        ``fn`` is a pure function of row-aligned tensors that returns a tensor or a tuple of them; row ``i`` of
        an output belongs to row ``i`` of the inputs, and each output is cut back to this rank's rows and
        sizes of the first input with as many dimensions. On one process it is ``fn(*tensors)`` itself, so
        one process computes bitwise as without ranks; on several the batch statistic is the one-process
        statistic of the same rows (padding columns are zeros, which masked statistics ignore).
        """
        if self.world_size == 1:
            return fn(*tensors)
        gathered = [_gather_rows(t) for t in tensors]
        result = fn(*(g[0] for g in gathered))
        outputs = result if isinstance(result, tuple) else (result,)
        mine = []
        for out in outputs:
            index = next(i for i, t in enumerate(tensors) if t.dim() == out.dim())
            counts, local = gathered[index][1], tensors[index].shape
            start = sum(counts[:self.rank])
            mine.append(out[(slice(start, start + counts[self.rank]), *(slice(0, n) for n in local[1:]))])
        return tuple(mine) if isinstance(result, tuple) else mine[0]

    def sum_numbers(self, values: Sequence[float]) -> list[float]:
        """Sums over ranks of plain numbers (float64: counts stay exact)."""
        if self.world_size == 1:
            return [float(v) for v in values]
        buffer = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_numbers_device())
        dist.all_reduce(buffer)
        return buffer.tolist()

    def mean_stats(self, stats: dict[str, float], summed: Callable[[str], bool]) -> dict[str, float]:
        """Logged statistics over ranks: the sum for the keys ``summed`` picks (counts, shares of a
        whole-step loss), else the mean (ranks hold equal shares, so that is the whole-batch mean)."""
        if self.world_size == 1:
            return stats
        keys = sorted(stats)  # the same order on every rank
        totals = dict(zip(keys, self.sum_numbers([stats[k] for k in keys]), strict=True))
        return {k: totals[k] if summed(k) else totals[k] / self.world_size for k in stats}

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank (so that all ranks take the same branch)."""
        return flag if self.world_size == 1 else self.sum_numbers([float(bool(flag))])[0] > 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. to fill a cache), then the other ranks run it."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    # --- state dicts (every rank calls them) ----------------------------------------------------
    def full_state_dict(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The whole (unsharded) state dict of ``module`` on rank 0, for it to write; other ranks may get {}."""
        return module.state_dict()

    def load_full_state_dict(self, module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Load a whole state dict (every rank has read it) into ``module``, sharding it where it is sharded."""
        module.load_state_dict(state)

    def save_state(self, directory: Path, trained: Modules, frozen: Modules, optimizer: torch.optim.Optimizer) -> None:
        """Write the ``trained`` and ``frozen`` modules (a reference copy) whole, frozen parameters included (a
        LoRA run's base too, so a resume does not depend on the base model's files), and the optimiser state,
        with ``torch.distributed.checkpoint`` as safetensors: every rank its own shard, replicated tensors
        once, no pickle. Resuming reads each rank's shard (on any number of ranks); no rank ever holds a
        full copy."""
        state = _distinct(_checkpoint_state(trained, frozen, optimizer)[0])
        with _single_process_quietly():
            dcp.save(state, storage_writer=dcp.HuggingFaceStorageWriter(str(directory), save_distributed=True),
                     no_dist=self.world_size == 1)

    def load_state(self, directory: Path, trained: Modules, frozen: Modules, optimizer: torch.optim.Optimizer) -> None:
        """Inverse of ``save_state``, in place."""
        state, optimizer_state = _checkpoint_state(trained, frozen, optimizer)
        try:
            with _single_process_quietly():  # into the live tensors: a tied weight's other name sees it too
                dcp.load(_distinct(state), storage_reader=dcp.HuggingFaceStorageReader(str(directory)),
                         no_dist=self.world_size == 1)
        except dcp.CheckpointException as err:  # a BaseException: raise it as an error callers can catch
            raise RuntimeError(str(err).strip().splitlines()[-1]) from err
        for name, module in {**trained, **frozen}.items():
            prefix = f"{name}."
            set_model_state_dict(module, {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        set_optimizer_state_dict(torch.nn.ModuleDict(trained), optimizer, optimizer_state)


class DDPEngine(Engine):
    """Data-parallel with torch's ``DistributedDataParallel``: every rank holds the whole model, its gradients
    and its Adam state; gradients are all-reduced in buckets during the last micro-batch's backward,
    overlapping communication with computation (``no_sync`` for the others).

    For models whose weights, gradients and Adam state fit on one GPU (LoRA adapters; full fine-tuning up
    to about 1.5B parameters). DDP's reduction is replaced by a plain sum (the losses are normalised by
    the whole step's counts already), and ``find_unused_parameters`` lets a parameter that got no
    gradient on some rank take part in the reduction with zeros instead of misaligning it.
    """

    name = "ddp"

    def __init__(self) -> None:
        super().__init__(*_world())
        self._wrapped: list[torch.nn.parallel.DistributedDataParallel] = []

    def prepare(self, policy: Policy, modules: Modules) -> Modules:
        if self._wrapped:
            raise EngineError("this DDPEngine already prepares an agent; give each agent its own engine")
        policy.wrapped = self._wrap(policy.model)
        return {name: self._wrap(module) for name, module in modules.items()}

    def _wrap(self, module: torch.nn.Module) -> torch.nn.parallel.DistributedDataParallel:
        """DDP around ``module`` (its construction broadcasts rank 0's weights), summing gradients over ranks."""
        on_gpu = next(module.parameters()).device.type == "cuda"
        wrapped = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[next(module.parameters()).device] if on_gpu else None, find_unused_parameters=True)
        wrapped.register_comm_hook(None, _sum_hook)
        self._wrapped.append(wrapped)
        return wrapped

    def accumulating(self, sync: bool) -> contextlib.AbstractContextManager[None]:
        if sync:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        for wrapped in self._wrapped:
            stack.enter_context(wrapped.no_sync())
        return stack


def _sum_hook(state, bucket):  # unannotated: DDP checks annotations, and this module's are strings
    """DDP's all-reduce without its division by the world size: each rank's loss is already its part of the
    whole step's loss, so the step's gradient is the sum of the ranks' gradients. ``bucket`` is a
    ``dist.GradBucket``; the result a future of the summed bucket."""
    return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda fut: fut.value()[0])


def _checkpoint_state(trained: Modules, frozen: Modules, optimizer: torch.optim.Optimizer,
                      ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A flat ``{name: tensor}`` of what a checkpoint holds (views of the live tensors, sharded where they
    are) and the optimiser's state dict those optimiser tensors belong to."""
    state: dict[str, torch.Tensor] = {}
    for name, module in {**trained, **frozen}.items():
        state.update({f"{name}.{k}": v for k, v in get_model_state_dict(module).items()})
    optimizer_state = get_optimizer_state_dict(torch.nn.ModuleDict(trained), optimizer)
    for fqn, entries in optimizer_state["state"].items():
        state.update({f"optimizer.{fqn}.{k}": v for k, v in entries.items()})
    return state, optimizer_state


@contextlib.contextmanager
def _single_process_quietly() -> Iterator[None]:
    """Without the warning ``torch.distributed.checkpoint`` gives every single-process save and load."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _distinct(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without the second name of a tensor it holds twice (tied input and output embeddings):
    safetensors stores each tensor once."""
    seen, kept = set(), {}
    for name, tensor in state.items():
        local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
        key = (local.untyped_storage().data_ptr(), local.storage_offset(), tuple(local.shape))
        if local.numel() == 0 or key not in seen:
            seen.add(key)
            kept[name] = tensor
    return kept


def _numbers_device() -> torch.device:
    """Where small reductions run: the CPU unless the process group has no CPU backend (NCCL only)."""
    backend = str(dist.get_backend())
    return torch.device("cuda", torch.cuda.current_device()) if "gloo" not in backend else torch.device("cpu")


def _gather_rows(tensor: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """All ranks' rows of ``tensor`` (zero-padded to the largest size in every dimension past the first) and
    each rank's row count."""
    world = dist.get_world_size()
    shape = torch.tensor(tensor.shape, dtype=torch.int64, device=tensor.device)
    shapes = [torch.empty_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape)
    sizes = torch.stack(shapes).amax(0).tolist()
    padded = tensor.new_zeros(sizes)
    padded[tuple(slice(0, n) for n in tensor.shape)] = tensor
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    counts = [int(s[0]) for s in shapes]
    return torch.cat([part[:n] for part, n in zip(parts, counts, strict=True)]), counts


class _ShardedEnv:
    """A batched env whose ``sample(n, rng, ...)`` draws all ``n`` examples with the step's generator (the
    same on every rank, so every rank's generator stays in step) and keeps this rank's contiguous share."""

    def __init__(self, env: Any, engine: Engine):
        self._env, self._engine = env, engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)

    def sample(self, n: int, rng: Any, *args: Any, **kwargs: Any) -> list[Any]:
        examples = self._env.sample(n, rng, *args, **kwargs)
        return examples[self._engine.share(n, "examples of a step")]
