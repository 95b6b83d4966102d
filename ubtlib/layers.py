"""Layers whose trained weights do not depend on the thread count.

torch's fused CPU kernels for layer norm and convolution (oneDNN) split their weight
gradients across threads, so the same seed trains to different weights on 1, 2 or 4 threads.
These drop-in replacements compute the same function with the gradients' sums done where
they do not depend on the thread count: plain element-wise ops, matrix products (whose sums
MKL's strict reproducible mode, `ubtlib.numerics`, fixes) and convolutions that sum each output
in one thread. Each keeps its parent's parameters and state-dict keys, so weights load either way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class SplitAffineLayerNorm(torch.nn.LayerNorm):
    """LayerNorm whose scale and shift are applied after the fused normalisation, as plain ops.

    The fused kernel sums the scale and shift gradients over tokens in per-thread buffers;
    autograd's reduction for a broadcast product sums each channel in one thread.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x, self.normalized_shape, None, None, self.eps)
        return (y * self.weight + self.bias).to(x.dtype)


class PatchEmbedding(torch.nn.Conv2d):
    """The ViT's patch projection (a convolution whose stride is its kernel) as one matrix
    product over non-overlapping patches."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.kernel_size[0]
        n, c, h, w = x.shape
        patches = x.unfold(2, p, p).unfold(3, p, p)  # n, c, h/p, w/p, p, p
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(n, (h // p) * (w // p), c * p * p)
        y = patches @ self.weight.reshape(self.out_channels, -1).T  # n, patches, width
        return y.transpose(1, 2).reshape(n, self.out_channels, h // p, w // p)


class _ConvWithProductWeightGrad(torch.autograd.Function):
    """torch's convolution forward and input gradient; the weight gradient as a convolution of
    the input with the output gradient (images as channels), the bias gradient as per-image
    sums added in a fixed order."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.geometry, ctx.has_bias = (stride, padding, dilation), bias is not None
        return F.conv2d(x, weight, bias, stride, padding, dilation)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.geometry
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.nn.grad.conv2d_input(x.shape, weight, grad, stride, padding, dilation)
        # a convolution of the input with the output gradient, images as its channels
        grad_w = F.conv2d(x.transpose(0, 1), grad.transpose(0, 1), None, dilation, padding, stride)
        grad_w = grad_w.transpose(0, 1)[:, :, : weight.shape[2], : weight.shape[3]]
        grad_b = grad.sum((2, 3)).sum(0) if ctx.has_bias else None
        return grad_x, grad_w, grad_b, None, None, None


class InvariantConv2d(torch.nn.Conv2d):
    """A zero-padded, ungrouped convolution whose weight gradient does not depend on the threads.

    oneDNN splits a convolution's weight gradient over threads; forward and input gradient
    are torch's own kernels, which sum each output in one thread.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.groups != 1 or self.padding_mode != "zeros" or isinstance(self.padding, str):
            raise ValueError("InvariantConv2d takes groups=1, padding_mode='zeros' and numeric padding")
        return _ConvWithProductWeightGrad.apply(
            x, self.weight, self.bias, self.stride, self.padding, self.dilation
        )
