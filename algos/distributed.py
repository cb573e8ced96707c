"""One training run on several processes (``torchrun``, ``accelerate launch``): the engine ``Agent`` uses.

Data-parallel and exact. Each process (rank) owns a contiguous share of every step's prompt groups
(all G samples of a prompt on one rank, so group statistics do not change); losses are normalised by
the totals of the whole step summed over ranks, and gradients are summed over ranks before clipping,
so W processes compute the gradient one process computes on the whole batch (up to the order of
float sums). Statistics that span the batch (GRPO's batch std, PPO's whitening and adaptive KL) sum
their parts over ranks through :func:`batch_sum` while a sharded batch is made; on one process it
returns its arguments untouched, so single-process numbers are bitwise those of code without ranks.

The process group is started from the environment ``torchrun`` and ``accelerate launch`` set
(``WORLD_SIZE`` > 1): NCCL for CUDA tensors, gloo for CPU tensors. Algorithm files know nothing of
this: ``Agent`` shards the env, reduces totals, gradients and logged statistics, and rank 0 alone writes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
_BUCKET = 1 << 25  # elements per collective when tensors are flattened together (128 MiB of float32)
_batch_engine: Engine | None = None  # set while a sharded step's batch is made (see Engine.making_batch)


def device() -> torch.device:
    """This process's device: its local GPU (``LOCAL_RANK``) when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def current() -> Engine:
    """This process's engine: several processes when launched by torchrun or ``accelerate launch``
    (``WORLD_SIZE`` > 1; the process group is started here unless the caller started one), else one."""
    if not dist.is_available():
        return Engine()
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if torch.cuda.is_available():
            torch.cuda.set_device(device())
        dist.init_process_group("cuda:nccl,cpu:gloo" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized() and dist.get_world_size() > 1:
        return Engine(dist.get_rank(), dist.get_world_size())
    return Engine()


def close() -> None:
    """End the process group ``current`` started (before a launched process exits)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@dataclass(frozen=True)
class Engine:
    """Rank ``rank`` of ``world_size`` processes; with one process every method is the identity."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes logs, checkpoints and saved agents."""
        return self.rank == 0

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

    @contextlib.contextmanager
    def making_batch(self) -> Iterator[None]:
        """While a step's batch is made, :func:`batch_sum` and :func:`batch_offset` span all ranks."""
        global _batch_engine
        previous, _batch_engine = _batch_engine, (self if self.world_size > 1 else None)
        try:
            yield
        finally:
            _batch_engine = previous

    # --- collectives (every rank calls them in the same order) --------------------------------
    def sum_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Sum each tensor over ranks, in place (flattened into a few collectives)."""
        self._flat(tensors, lambda flat: dist.all_reduce(flat, op=dist.ReduceOp.SUM))

    def broadcast_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Overwrite each tensor with rank 0's, in place."""
        self._flat(tensors, lambda flat: dist.broadcast(flat, src=0))

    def _flat(self, tensors: Sequence[torch.Tensor], collective: Callable[[torch.Tensor], Any]) -> None:
        if self.world_size == 1:
            return
        buckets: dict[tuple[torch.device, torch.dtype], list[list[torch.Tensor]]] = {}
        for t in tensors:
            bucket = buckets.setdefault((t.device, t.dtype), [[]])
            if bucket[-1] and sum(x.numel() for x in bucket[-1]) + t.numel() > _BUCKET:
                bucket.append([])
            bucket[-1].append(t)
        for group in (g for key in sorted(buckets, key=str) for g in buckets[key]):
            flat = torch.cat([t.reshape(-1) for t in group])
            collective(flat)
            for t, part in zip(group, flat.split([t.numel() for t in group]), strict=True):
                t.copy_(part.view_as(t))

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

    def from_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` computed on rank 0 only and handed to every rank; an error there is raised everywhere."""
        if self.world_size == 1:
            return fn()
        box: list[Any] = [None]
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except Exception as err:
                box[0] = ("error", f"{type(err).__name__}: {err}")
                dist.broadcast_object_list(box, src=0)
                raise
        dist.broadcast_object_list(box, src=0)
        status, value = box[0]
        if status == "error":
            raise RuntimeError(f"rank 0 failed ({value})")
        return value

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


def _numbers_device() -> torch.device:
    """Where small reductions run: the CPU unless the process group has no CPU backend (NCCL only)."""
    backend = str(dist.get_backend())
    return torch.device("cuda", torch.cuda.current_device()) if "gloo" not in backend else torch.device("cpu")


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


# --- what shared code that spans a batch calls (the identity on one process) ------------------------
def batch_sum(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each tensor summed over the step's whole batch: over all ranks while a sharded batch is made,
    else returned as given (the very same tensors, so one process computes exactly as before)."""
    if _batch_engine is None:
        return tensors
    summed = tuple(t.detach().clone() for t in tensors)
    _batch_engine.sum_(summed)
    return summed


def batch_is_sharded() -> bool:
    """Whether a step's batch is being made in shares on several ranks."""
    return _batch_engine is not None


def batch_offset(local_count: int) -> int:
    """Index in the step's batch of this rank's first item, when each rank holds ``local_count`` of them."""
    return 0 if _batch_engine is None else _batch_engine.rank * local_count
