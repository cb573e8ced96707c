"""One training run on several processes (``torchrun``, ``accelerate launch``): the engine ``Agent`` uses.

Data-parallel and exact. Each process (rank) owns a contiguous share of every step's prompt groups
(all G samples of a prompt on one rank, so group statistics do not change); losses are normalised by
the totals of the whole step summed over ranks, and gradients are summed over ranks before clipping,
so W processes compute the gradient one process computes on the whole batch (up to the order of
float sums). Statistics that span the batch (GRPO's batch std, PPO's whitening and adaptive KL) are
computed by gather -> pure function -> slice (:meth:`Engine.over_batch`): on the whole batch, exactly as
one process computes them, and on one process with no gather at all.

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

    def offset_of_share(self, local_count: int) -> int:
        """Index in the step's batch of this rank's first item, when every rank holds ``local_count`` of them."""
        return self.rank * local_count

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
