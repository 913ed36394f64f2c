"""Run a per-ROI network on chunks of ROIs, optionally with activation checkpointing."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint


def run_in_chunks(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    chunk_size: int,
    checkpoint_chunks: bool = False,
) -> torch.Tensor:
    """``fn(x)`` computed ``chunk_size`` rows at a time (``fn`` must act row by row).

    Chunks bound the temporaries of each call and of its backward (a convolution's weight
    gradient over N ROIs allocates buffers proportional to N). With ``checkpoint_chunks``
    and gradients enabled, each chunk keeps no activations: they are recomputed in the
    backward pass, one chunk at a time, for the cost of one more forward.

    Shape:
        - x: ``(N, ...)``
        - output: ``(N, ...)``, as ``fn(x)``
    """
    n = x.shape[0]
    grad = torch.is_grad_enabled()
    ckpt = checkpoint_chunks and grad
    if n == 0 or not chunk_size or not grad or (n <= chunk_size and not ckpt):
        # Without gradients a call keeps nothing for a backward pass: the chunks would
        # only add calls.
        return fn(x)
    pieces = []
    for i in range(0, n, chunk_size):
        part = x[i : i + chunk_size]
        if ckpt:
            # No randomness inside: the RNG state need not be saved for recomputation.
            pieces.append(checkpoint(fn, part, use_reentrant=False, preserve_rng_state=False))
        else:
            pieces.append(fn(part))
    return torch.cat(pieces) if len(pieces) > 1 else pieces[0]
