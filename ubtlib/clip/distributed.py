"""Training over several processes, as `torchrun --nproc_per_node N` starts them (the
paper-scale commands; the pocket chapters run one process).

One process per device. Every rank walks the same seeded order of the data and takes its
share of each global batch (`SharedOrder`, `shard`), so the global batch, and the result, do
not depend on N beyond float rounding. Contrastive losses gather every rank's features with
their gradients (open_clip's ClipLoss with `gather_with_grad`, or `gather`), so each rank
computes the whole batch's loss; losses that are means over the batch are each rank's mean
over its share. Averaging the ranks' gradients then gives exactly the single-process gradient.
Poisoned fine-tuning averages them with DistributedDataParallel, which overlaps the exchange
with the backward pass but needs the step's one forward to go through it; the defenses encode
the towers several times per step (D_susp and D_safe, the unlearning captions and the retain
batch), so they average before each optimizer step (`averaged_gradients`). Only rank 0 writes
files and shows progress. A rank that raises ends the job: torchrun stops the others and
reports the error.

Outside torchrun (no WORLD_SIZE in the environment) everything here is the identity: one rank,
the model unwrapped, open_clip's plain ClipLoss, the batch whole.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import open_clip
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_autograd
from torch.nn.parallel import DistributedDataParallel
from torch.optim.optimizer import register_optimizer_step_pre_hook
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


def shard(batch: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """This rank's consecutive `len(batch) / world` rows of a global batch (the batch itself
    for one rank)."""
    if ranks.world == 1:
        return batch
    check_split("batch size", len(batch), ranks)
    share = len(batch) // ranks.world
    return batch[ranks.rank * share : (ranks.rank + 1) * share]


def gather(features: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """Every rank's `features` in rank order, the global batch, with gradients flowing back to
    each rank's own rows (the features themselves for one rank)."""
    if ranks.world == 1:
        return features
    return torch.cat(dist_autograd.all_gather(features))


def same_on_all(result: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """Rank 0's `result` on every rank. Each rank scores the data itself, and a choice made
    from the scores (the split, the top k) must not differ between ranks by a rounding."""
    if ranks.world == 1:
        return result
    # NCCL moves CUDA tensors only
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else result.device
    sent = result.to(on).contiguous()
    dist.broadcast(sent, src=0)
    return sent.to(result.device)


@contextlib.contextmanager
def averaged_gradients(model: torch.nn.Module, ranks: Ranks):
    """While inside, every optimizer step on `model`'s parameters first averages their gradients
    over the ranks, in the parameters' order; a parameter that got a gradient on some rank only
    gets a zero one on the others (nothing at all for one rank)."""
    if ranks.world == 1:
        yield
        return

    def average(optimizer, args, kwargs):
        # looked up at each step: a run may swap a parameter in (`vocabulary.trained_rows`)
        mine = {id(p) for p in model.parameters()}
        params = [p for g in optimizer.param_groups for p in g["params"] if id(p) in mine]
        if not params:
            return
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
        dist.all_reduce(has)
        for p, n in zip(params, has.tolist()):
            if n:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
                p.grad.div_(ranks.world)

    handle = register_optimizer_step_pre_hook(average)
    try:
        yield
    finally:
        handle.remove()


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
        for b in range(len(self)):
            yield shard(order[b * self.batch_size : (b + 1) * self.batch_size], self.ranks).tolist()
