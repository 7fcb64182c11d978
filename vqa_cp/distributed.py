"""torchrun / DistributedDataParallel helpers, kept apart from the training loop.

Outside torchrun (no WORLD_SIZE in the environment) every helper is the single-process identity.
"""

from __future__ import annotations

import datetime
import gc
import math
import os
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import Sampler

from vqa_cp.errors import VQAError

COLLECTIVE_TIMEOUT_S = int(os.environ.get("VQA_CP_COLLECTIVE_TIMEOUT", "600"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def setup() -> None:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPUs), with a timeout on
    collectives so that the other ranks stop instead of hanging when one dies."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))


def teardown() -> None:
    """Destroy the process group once the DDP objects (reference cycles) are freed: gloo work that
    outlives the group would otherwise be destroyed during interpreter shutdown, which aborts."""
    if is_distributed():
        gc.collect()
        dist.destroy_process_group()


def under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def run_front(main: Callable[[list[str]], object], argv: list[str]) -> None:
    """A command-line front that may run under torchrun: `run_cli(main(argv))`, then, under torchrun, an exit
    without interpreter finalization (every file is written and closed; leftover gloo worker threads can abort
    the process there after a successful run)."""
    import sys

    from vqa_cp.errors import run_cli

    run_cli(lambda: main(argv))
    if under_torchrun():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """DDP around the whole objective, so one backward all-reduces every gradient once."""
    if not is_distributed():
        return module
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def differentiable_all_reduce() -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A sum over processes that autograd differentiates through (None outside torchrun)."""
    if not is_distributed():
        return None
    from torch.distributed.nn.functional import all_reduce
    return all_reduce


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum a list of floats over ranks (float64)."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


def gather_arrays(array: np.ndarray) -> np.ndarray:
    """Concatenate a 1-D array from every rank, in rank order (all_gather_object pads for us)."""
    if not is_distributed():
        return array
    parts: list[np.ndarray | None] = [None] * world_size()
    dist.all_gather_object(parts, array)
    return np.concatenate(parts)


class EpochSampler(Sampler[int]):
    """Per-epoch reshuffled indices, split across ranks as DistributedSampler does.

    The permutation depends only on (seed, epoch), so resuming needs no sampler state; `skip`
    drops this rank's first indices to resume in the middle of an epoch. Rank r of R takes
    perm[r::R] (the list padded to a multiple of R), so batch i of the R ranks together holds the
    same questions as batch i of one process with an R times larger batch.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1) -> None:
        if n == 0:
            raise VQAError("the training split is empty")
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.epoch, self.skip = 0, 0
        self.per_rank = math.ceil(n / world)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def _indices(self) -> list[int]:
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        perm += perm[: self.per_rank * self.world - self.n]
        return perm[self.rank :: self.world][self.skip :]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return max(self.per_rank - self.skip, 0)
