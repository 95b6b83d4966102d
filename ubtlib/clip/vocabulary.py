"""Training the rows of the token embedding that a run's captions use.

CLIP's token embedding holds a row for each of its 49,408 BPE tokens, and a run on captions
held in memory reads a few hundred of them (the pocket CLIP's embedding is most of its
parameters). Under AdamW a row that no caption reads gets a zero gradient at every step, so its
moments stay zero and its update is the weight decay alone, p <- p (1 - lr wd). Training the
whole table still computes a dense gradient and an AdamW update of every row at every step.

`trained_rows` swaps in an embedding of the rows a run uses: they train as before, and the
others receive their decay when the run ends, as one product of the steps' factors. The model
is the same function of the same weights, trained by the same update to float rounding
(tests/test_vocabulary.py trains both ways and compares every weight).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Optional, Union

import torch
import torch.nn.functional as F

Tokens = Union[torch.Tensor, Sequence[torch.Tensor]]


class TrainedRows(torch.nn.Module):
    """A token embedding whose parameter holds only the rows of `used` (sorted token ids).

    The other rows keep their values times `decay`, the product of the weight-decay factors of
    the optimizer steps taken so far. A forward that needs a gradient must read used rows only;
    one without (an evaluation during the run) may read any token, from the whole table."""

    def __init__(self, embedding: torch.nn.Embedding, used: torch.Tensor):
        super().__init__()
        self.full = embedding.weight.detach()  # a plain attribute: not a parameter or a buffer
        self.used = used
        self.row_of = torch.full((embedding.num_embeddings,), -1, dtype=torch.long, device=used.device)
        self.row_of[used] = torch.arange(len(used), device=used.device)
        self.weight = torch.nn.Parameter(self.full[used].clone())
        self.decay = 1.0

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.row_of[ids]
        if not bool((rows < 0).any()):
            return F.embedding(rows, self.weight)
        if torch.is_grad_enabled() and self.weight.requires_grad:
            unknown = torch.unique(ids[rows < 0]).tolist()
            raise ValueError(
                f"token ids {unknown[:10]} are not among the {len(self.used)} this training run "
                "was given: pass every token tensor its loss encodes as optimize's `vocabulary`"
            )
        return F.embedding(ids, self.table())

    def table(self) -> torch.Tensor:
        """The whole embedding, as training the full table would have it now."""
        table = self.full * self.decay
        table[self.used] = self.weight.detach()
        return table

    def stepped(self, optimizer: torch.optim.Optimizer) -> None:
        """Record the decay of the optimizer step just taken (AdamW skips a parameter that got no
        gradient, and so does this)."""
        if self.weight.grad is None:
            return
        group = next(g for g in optimizer.param_groups if any(p is self.weight for p in g["params"]))
        self.decay *= 1.0 - float(group["lr"]) * group["weight_decay"]


def _owner(model: torch.nn.Module) -> Optional[torch.nn.Module]:
    """The module holding the text tower's `token_embedding` (open_clip's CLIP itself, or the
    `text` tower of a CustomTextCLIP), if it is a plain embedding."""
    for owner in (model, getattr(model, "text", None)):
        if isinstance(getattr(owner, "token_embedding", None), torch.nn.Embedding):
            return owner
    return None


@contextlib.contextmanager
def trained_rows(model: torch.nn.Module, vocabulary: Optional[Tokens]):
    """Within, `model`'s token embedding trains only the rows of the token ids in `vocabulary`
    (a tensor or a sequence of tensors of ids: every token the run's losses encode); yields
    the `TrainedRows`, whose `stepped(optimizer)` must follow each optimizer step. Yields None,
    changing nothing, without a vocabulary, a token embedding or one that trains. On leaving,
    even by an exception, the trained rows and the decay of the others go back into the
    model's own embedding."""
    owner = _owner(model)
    if vocabulary is None or owner is None or not owner.token_embedding.weight.requires_grad:
        yield None
        return
    embedding = owner.token_embedding
    if isinstance(vocabulary, torch.Tensor):
        vocabulary = [vocabulary]
    ids = torch.cat([torch.as_tensor(t).reshape(-1) for t in vocabulary]).to(embedding.weight.device)
    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= embedding.num_embeddings):
        raise ValueError(
            f"vocabulary holds token ids from {int(ids.min())} to {int(ids.max())}: accepted 0 to "
            f"{embedding.num_embeddings - 1}"
        )
    rows = TrainedRows(embedding, torch.unique(ids))
    owner.token_embedding = rows
    try:
        yield rows
    finally:
        with torch.no_grad():
            embedding.weight.copy_(rows.table())
        owner.token_embedding = embedding
