"""Batch normalisation that treats every sample of a batch as its own batch of one.

The authors' code feeds each measurement to its network as a batch of one, so ``nn.BatchNorm2d``
normalises each image with its own per-channel statistics. :class:`PerSampleBatchNorm2d` keeps that
behaviour for a batch of B independent measurements: the result for sample b is exactly what
``nn.BatchNorm2d`` gives on ``x[b:b+1]``.

>>> import torch
>>> norm = PerSampleBatchNorm2d(3)
>>> x = torch.randn(2, 3, 8, 8)
>>> torch.allclose(norm(x)[1:], torch.nn.BatchNorm2d(3)(x[1:]), atol=1e-6)
True
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .stack import is_batched

__all__ = ["PerSampleBatchNorm2d"]


class PerSampleBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training-mode statistics are computed per sample over (H, W).

    - Training mode (or no running statistics): sample b is normalised with the mean and biased
      variance of ``x[b]`` over (H, W), per channel. With ``per_sample = False`` the statistics are
      taken over the whole batch, as ``nn.BatchNorm2d`` does (UGoDIT pre-training's ``"group"`` option).
    - Running statistics (when tracked) are updated once per call with the batch mean of the
      per-sample means and of the per-sample *unbiased* variances, with BatchNorm's ``momentum``
      (``momentum=None``: cumulative average). For B = 1 this is exactly ``nn.BatchNorm2d``.
    - Eval mode uses the running statistics, as ``nn.BatchNorm2d`` does.

    Parameters, buffers and ``state_dict`` keys are those of ``nn.BatchNorm2d``. Where its statistics
    are BatchNorm's (one sample, whole-batch statistics, or eval mode) it runs ``nn.BatchNorm2d``'s
    fused kernel; otherwise, and always under ``torch.func.vmap`` with batched (stacked) running
    buffers, which it updates in place (see :class:`ugodit_pl.nets.ModuleStack`), plain tensor
    operations.

    >>> norm = PerSampleBatchNorm2d(4)
    >>> out = norm(torch.randn(3, 4, 5, 5))
    >>> out.mean(dim=(2, 3)).abs().max() < 1e-5
    tensor(True)
    """

    per_sample = True

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        shape = (1, -1, 1, 1)
        if use_batch_stats:
            dims = (2, 3) if self.per_sample else (0, 2, 3)
            count = x.shape[2] * x.shape[3] * (1 if self.per_sample else x.shape[0])
            if count < 2:
                raise ValueError(
                    f"PerSampleBatchNorm2d: expected more than 1 value per channel in training mode, "
                    f"got input of spatial size {tuple(x.shape[2:])}"
                )
        if not is_batched(x) and (not use_batch_stats or not self.per_sample or x.shape[0] == 1):
            return super().forward(x)  # the same statistics as nn.BatchNorm2d: its fused kernel
        if use_batch_stats:
            var, mean = torch.var_mean(x, dim=dims, correction=0, keepdim=True)
            if self.training and self.track_running_stats and self.running_mean is not None:
                self._update_running_stats(mean, var, count)
            out = (x - mean) * torch.rsqrt(var + self.eps)
        else:
            out = (x - self.running_mean.view(shape)) * torch.rsqrt(self.running_var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out

    def _update_running_stats(self, mean: Tensor, var: Tensor, count: int) -> None:
        """Blend the batch means of the per-sample statistics into the running buffers (in place)."""
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / self.num_batches_tracked.to(mean.dtype)
            else:
                factor = self.momentum
            batch_mean = mean.detach().mean(dim=0).flatten()
            batch_var = var.detach().mean(dim=0).flatten() * (count / (count - 1))
            self.running_mean.mul_(1 - factor).add_(batch_mean * factor)
            self.running_var.mul_(1 - factor).add_(batch_var * factor)
