"""CLIP towers that compute only the tokens their pooled features read.

A CLIP feature is one token of its tower's last block: the class token of a ViT, the
end-of-text token of the causal text transformer. open_clip runs every token through every
block, and two parts of that work are never read:

* the last block's query, attention output and MLP at every token but the pooled one (its keys
  and values still come from every token);
* in the text tower, the positions after the batch's last end-of-text token: under the causal
  mask no earlier position attends to them.

`install` gives a model forwards that skip both. Their blocks also compute attention from one
packed projection viewed as heads (`_attention`), without nn.MultiheadAttention's moves of the
batch axis and its three selections of q, k and v, whose gradients are zero-filled copies; the
products are the same. The features are the same function of the weights, so training follows
the same recipe and results move by float rounding only (tests/test_pooled.py compares
features, gradients and a few training steps with open_clip's forward). A transformer whose
`every_token` is set computes all tokens again, for the callers that read them (token relevance
reads every attention map).
"""

from __future__ import annotations

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, Transformer, VisionTransformer


def _attention(attn: torch.nn.MultiheadAttention, x: torch.Tensor, rows=None, mask=None) -> torch.Tensor:
    """`attn` over x (N x L x D, batch first), at every token or at one per sequence (`rows`);
    `mask` as scaled_dot_product_attention takes it. nn.MultiheadAttention's own forward moves
    the batch to the second axis and back, and splits q, k and v by three selections, each of
    whose gradients is a zero-filled copy: here one packed projection is viewed as heads."""
    n, length, width = x.shape
    heads = attn.num_heads
    w, b = attn.in_proj_weight, attn.in_proj_bias
    if rows is None:
        qkv = F.linear(x, w, b).view(n, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
    else:
        at = x[torch.arange(n, device=x.device), rows]
        q = F.linear(at, w[:width], None if b is None else b[:width]).view(n, heads, 1, width // heads)
        kv = F.linear(x, w[width:], None if b is None else b[width:])
        k, v = kv.view(n, length, 2, heads, width // heads).permute(2, 0, 3, 1, 4).unbind(0)
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return attn.out_proj(out.transpose(1, 2).reshape(n, -1, width))


def _block(block: ResidualAttentionBlock, x: torch.Tensor, attn_mask=None) -> torch.Tensor:
    """`block` at every token of x (N x L x D)."""
    x = x + block.ls_1(_attention(block.attn, block.ln_1(x), mask=attn_mask))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _pooled_block(block: ResidualAttentionBlock, x: torch.Tensor, rows: torch.Tensor, hidden=None):
    """`block` at one token per sequence (`rows`), attending to every token of `x` (N x L x D)
    but those `hidden` (N x L, True where hidden) hides; returns N x D."""
    mask = None if hidden is None else ~hidden[:, None, None, :]
    y = x[torch.arange(len(x), device=x.device), rows] + block.ls_1(
        _attention(block.attn, block.ln_1(x), rows, mask)[:, 0]
    )
    return y + block.ls_2(block.mlp(block.ln_2(y)))


def _pooled_transformer(transformer: Transformer, x, rows, attn_mask=None, hidden=None):
    for block in transformer.resblocks[:-1]:
        x = _block(block, x, attn_mask)
    return _pooled_block(transformer.resblocks[-1], x, rows, hidden)


def _skips(transformer: Transformer) -> bool:
    return not (getattr(transformer, "every_token", False) or transformer.grad_checkpointing)


class PooledVisionTransformer(VisionTransformer):
    """open_clip's ViT with class-token pooling, computing the last block at the class token."""

    def forward(self, x: torch.Tensor):
        if self.output_tokens or not _skips(self.transformer):
            return super().forward(x)
        x = self._embeds(x)
        pooled = _pooled_transformer(
            self.transformer, x, torch.zeros(len(x), dtype=torch.long, device=x.device)
        )
        pooled = self.ln_post(pooled)  # a per-token norm: the same before or after pooling
        return pooled @ self.proj if self.proj is not None else pooled


class PooledTextCLIP(open_clip.CLIP):
    """open_clip's CLIP whose causal text tower stops at the batch's last end-of-text token and
    computes its last block at each caption's end-of-text token (the highest token id, which
    is what open_clip's "argmax" pooling reads)."""

    def encode_text(self, text: torch.Tensor, normalize: bool = False):
        if not _skips(self.transformer):
            return super().encode_text(text, normalize)
        eot = text.argmax(dim=-1)
        length = int(eot.max()) + 1
        cast_dtype = self.transformer.get_cast_dtype()
        x = self.token_embedding(text[:, :length]).to(cast_dtype)
        x = x + self.positional_embedding[:length].to(cast_dtype)
        after_eot = torch.arange(length, device=text.device)[None] > eot[:, None]
        x = _pooled_transformer(self.transformer, x, eot, self.attn_mask[:length, :length], after_eot)
        x = self.ln_final(x)
        if self.text_projection is not None:
            x = (
                self.text_projection(x)
                if isinstance(self.text_projection, torch.nn.Linear)
                else x @ self.text_projection
            )
        return F.normalize(x, dim=-1) if normalize else x


def _plain_blocks(transformer) -> bool:
    return (
        isinstance(transformer, Transformer)
        and transformer.batch_first
        and all(
            type(b) is ResidualAttentionBlock
            and not hasattr(b, "ln_1_kv")
            and type(b.attn) is torch.nn.MultiheadAttention
            and b.attn._qkv_same_embed_dim
            and b.attn.bias_k is None
            and not b.attn.add_zero_attn
            and b.attn.dropout == 0
            for b in transformer.resblocks
        )
    )


def install(model: torch.nn.Module) -> torch.nn.Module:
    """Give `model` the pooled-token forwards where its architecture allows them (in place;
    same parameters and state-dict keys) and return it. A ViT qualifies with class-token pooling
    and no attention pooler; a text tower when it is open_clip's causal, argmax-pooled CLIP text
    transformer. Any other tower keeps open_clip's forward."""
    visual = getattr(model, "visual", None)
    if (
        type(visual) is VisionTransformer
        and visual.attn_pool is None
        and visual.pool_type == "tok"
        and _plain_blocks(visual.transformer)
    ):
        visual.__class__ = PooledVisionTransformer
    if (
        type(model) is open_clip.CLIP
        and model.text_pool_type == "argmax"
        and model.attn_mask is not None
        and _plain_blocks(model.transformer)
    ):
        model.__class__ = PooledTextCLIP
    return model


def open_clip_forwards(model: torch.nn.Module) -> torch.nn.Module:
    """Undo `install`: `model` with open_clip's own forwards again (in place; returned)."""
    if type(getattr(model, "visual", None)) is PooledVisionTransformer:
        model.visual.__class__ = VisionTransformer
    if type(model) is PooledTextCLIP:
        model.__class__ = open_clip.CLIP
    return model
