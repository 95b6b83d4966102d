"""Paper-scale training over several processes, as `torchrun --nproc_per_node N` starts them.

One process per device. Every rank walks the same seeded order of the data and takes its
share of each global batch (`SharedOrder`), so the global batch, and the result, do not depend
on N beyond float rounding. DistributedDataParallel averages the gradients; open_clip's
ClipLoss gathers every rank's features with their gradients, so each rank's loss is the whole
batch's (the logged curve is the single-process one) and the averaged gradient is exactly the
single-process gradient. Only rank 0 writes files and shows progress. A rank that raises ends
the job: torchrun stops the others and reports the error.

Outside torchrun (no WORLD_SIZE in the environment) everything here is the identity: one rank,
the model unwrapped, open_clip's plain ClipLoss.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import open_clip
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler

from ubtlib.clip import model as modellib


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: its rank among `world` processes, and on its node."""

    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes weights and JSON and shows the progress bar."""
        return self.rank == 0


def launched_processes() -> int:
    """How many processes torchrun started for this job (WORLD_SIZE; 1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def start(device: str = "auto", timeout_s: float = 1800.0) -> tuple:
    """(Ranks, torch.device) of this process. Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK set)
    the process group is started once, NCCL on CUDA and gloo on a CPU, and a CUDA rank gets the
    device of its local rank; a single process gets `modellib.pick_device(device)`."""
    chosen = modellib.pick_device(device)
    world = launched_processes()
    if world == 1:
        return Ranks(), chosen
    ranks = Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if chosen.type == "cuda":
        chosen = torch.device("cuda", ranks.local)
        torch.cuda.set_device(chosen)
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if chosen.type == "cuda" else "gloo", timeout=datetime.timedelta(seconds=timeout_s)
        )
    return ranks, chosen


def current() -> Ranks:
    """The running job's Ranks (one rank when no process group is started)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Ranks()
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def contrastive_loss(ranks: Ranks) -> open_clip.ClipLoss:
    """open_clip's ClipLoss for the job. Over several ranks the features are gathered with their
    gradients (`gather_with_grad`) and every rank computes the whole batch's loss (no
    `local_loss`): each rank logs the single-process loss, and with DDP's averaging the gradient
    is the single-process one. `local_loss` would save the full logit matrix per rank, at a
    batch size (thousands) this book's recipes never reach."""
    if ranks.world == 1:
        return open_clip.ClipLoss()
    return open_clip.ClipLoss(gather_with_grad=True, rank=ranks.rank, world_size=ranks.world)


def wrap(model: torch.nn.Module, ranks: Ranks, device) -> torch.nn.Module:
    """The model in DistributedDataParallel over several ranks (call it for the forward; step
    the optimizer on `model` itself), else `model`."""
    if ranks.world == 1:
        return model
    device = torch.device(device)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def barrier(ranks: Ranks) -> None:
    """Wait for every rank (e.g. until rank 0 has written a file the others read)."""
    if ranks.world > 1:
        dist.barrier()


def check_split(name: str, batch_size: int, ranks: Ranks) -> None:
    """A global batch must split evenly over the processes (each takes an equal share)."""
    if batch_size % ranks.world:
        raise ValueError(
            f"{name}={batch_size} does not split over {ranks.world} processes: "
            f"accepted a multiple of {ranks.world}"
        )


class SharedOrder(Sampler):
    """A DataLoader batch sampler: each epoch one seeded permutation of range(n), the same on
    every rank, cut into global batches of `batch_size` (ragged end dropped), of which this rank
    yields its consecutive `batch_size / world` positions."""

    def __init__(self, n: int, batch_size: int, seed: int, ranks: Ranks = Ranks()):
        check_split("batch_size", batch_size, ranks)
        if n < batch_size and n % ranks.world:  # the whole data set is the batch
            raise ValueError(
                f"the {n} pairs, fewer than batch_size={batch_size}, make one batch that does not "
                f"split over {ranks.world} processes: give a multiple of {ranks.world} pairs"
            )
        batch_size = min(batch_size, n)
        self.n, self.batch_size, self.seed, self.ranks = n, batch_size, seed, ranks
        self.epoch = 0

    def __len__(self) -> int:
        return self.n // self.batch_size

    def __iter__(self):
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        self.epoch += 1
        share = self.batch_size // self.ranks.world
        for b in range(len(self)):
            start = b * self.batch_size + self.ranks.rank * share
            yield order[start : start + share].tolist()
