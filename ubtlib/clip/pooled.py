"""CLIP towers that compute only the tokens their pooled features read.

A CLIP feature is one token of its tower's last block: the class token of a ViT, the
end-of-text token of the causal text transformer. open_clip runs every token through every
block, and two parts of that work are never read:

* the last block's query, attention output and MLP at every token but the pooled one (its keys
  and values still come from every token);
* in the text tower, the positions after the batch's last end-of-text token: under the causal
  mask no earlier position attends to them.

`install` gives a model forwards that skip both. The features are the same function of the
weights, so training follows the same recipe and results move by float rounding only
(tests/test_pooled.py compares features, gradients and a few training steps with open_clip's
forward). A transformer whose `every_token` is set computes all tokens again, for the callers
that read them (token relevance reads every attention map).
"""

from __future__ import annotations

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, Transformer, VisionTransformer


def _pooled_block(block: ResidualAttentionBlock, x: torch.Tensor, rows: torch.Tensor, key_padding_mask=None):
    """`block` at one token per sequence (`rows`), attending to every token of `x` (N x L x D)
    but those `key_padding_mask` hides; returns N x D."""
    n = torch.arange(len(x), device=x.device)
    h = block.ln_1(x)
    attended = block.attn(h[n, rows][:, None], h, h, need_weights=False, key_padding_mask=key_padding_mask)[0]
    y = x[n, rows][:, None] + block.ls_1(attended)
    return (y + block.ls_2(block.mlp(block.ln_2(y))))[:, 0]


def _pooled_transformer(transformer: Transformer, x, rows, attn_mask=None, key_padding_mask=None):
    for block in transformer.resblocks[:-1]:
        x = block(x, attn_mask=attn_mask)
    return _pooled_block(transformer.resblocks[-1], x, rows, key_padding_mask)


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
            type(b) is ResidualAttentionBlock and not hasattr(b, "ln_1_kv") for b in transformer.resblocks
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
