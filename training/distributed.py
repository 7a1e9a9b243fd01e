"""Data-parallel training under torchrun: this process's rank, its share of the global
batch, and joining the process group (nccl on CUDA, gloo on CPU)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Distributed:
    """This process's place among the data-parallel ranks (torchrun's RANK, WORLD_SIZE and
    LOCAL_RANK); one process on its own is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Distributed:
        env = os.environ
        return cls(
            int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))
        )

    def shard(self, batch_size: int) -> slice:
        """This rank's rows of a global batch: a contiguous block of batch_size / world_size."""
        if batch_size % self.world_size:
            raise ValueError(
                f"batch_size {batch_size} does not split evenly over {self.world_size} ranks"
            )
        share = batch_size // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)


def init_distributed(ranks: Distributed, device: str) -> torch.device:
    """Join the process group torchrun describes (nccl on CUDA, gloo otherwise); returns this
    rank's device (cuda:LOCAL_RANK on CUDA). A single process needs no group."""
    chosen = torch.device(device)
    if ranks.world_size == 1:
        return chosen
    if chosen.type == "cuda":
        chosen = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(chosen)
        dist.init_process_group("nccl", device_id=chosen)
    else:
        dist.init_process_group("gloo")
    log.info("rank %d of %d on %s", ranks.rank, ranks.world_size, chosen)
    return chosen
