"""Fine-tuning the last blocks of a reward model's body with the Bradley-Terry loss.

The forward pass is stopped right after the Site's hook fires (nothing after the Site can
change the reward), with gradients kept through the captured activation. Only the ``n``
blocks ending at the Site's layer and the head's ``w``/``b`` are trained; the head's
standardisation statistics stay fixed. Dropout is left off (the body stays in ``eval()``) so
a seeded run is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mechunlearn.errors import ConfigError, EmptyDataError, HookNotFiredError
from mechunlearn.hooks import add_hooks
from mechunlearn.seal.data import PreferencePair
from mechunlearn.seal.encode import encode_items
from mechunlearn.seal.head import LinearHead, bradley_terry_loss
from mechunlearn.sites import Site
from mechunlearn.tokens import TokenBatch


class _Stop(Exception):
    """Ends the forward pass after the Site's hook."""


def site_activations(body: Any, batch: TokenBatch, site: Site) -> Tensor:
    """Pooled activations ``[n, d]`` at ``site`` with autograd enabled."""
    got: dict[str, Tensor] = {}

    def fn(act: Tensor) -> None:
        got["a"] = act
        raise _Stop

    handles = add_hooks(body, [(site.hook_name, fn)])
    dev = next(body.parameters()).device
    try:
        body(batch.input_ids.to(dev), attention_mask=batch.attention_mask.to(dev),
             return_type=None)
    except _Stop:
        pass
    finally:
        handles.remove()
    if "a" not in got:
        raise HookNotFiredError(f"Hook {site.hook_name} never fired during fine-tuning.")
    return site.reduce(got["a"], batch.attention_mask.to(dev), batch.response_mask.to(dev)
                       if batch.response_mask is not None else None)


def tuned_block_indices(body: Any, site: Site, n_blocks: int) -> list[int]:
    """Indices of the ``n_blocks`` blocks ending at the Site's layer."""
    n_layers = int(body.cfg.n_layers)
    last = site.layer if site.layer is not None else n_layers - 1
    if not 1 <= n_blocks <= last + 1:
        raise ConfigError(f"n_blocks must be in 1..{last + 1} for Site {site.key}, got "
                          f"{n_blocks}.")
    return list(range(last - n_blocks + 1, last + 1))


def finetune_body(body: Any, head: LinearHead, site: Site, pairs: Sequence[PreferencePair],
                  n_blocks: int, epochs: int, lr: float, head_lr: float, batch_size: int,
                  seed: int, max_length: int | None, sep: str,
                  ) -> tuple[LinearHead, list[int], list[float]]:
    """Train blocks + head in place; returns ``(new head, tuned block indices, losses)``."""
    if len(pairs) == 0:
        raise EmptyDataError("finetune_() got no pairs.")
    if epochs < 1 or batch_size < 1:
        raise ConfigError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}.")
    blocks = tuned_block_indices(body, site, n_blocks)
    params = [t for i in blocks for t in body.blocks[i].parameters()]
    flags = {id(t): t.requires_grad for t in body.parameters()}
    dtype = params[0].dtype
    w = torch.nn.Parameter(head.w.to(dtype).clone())
    b = torch.nn.Parameter(head.b.to(dtype).clone())
    opt = torch.optim.AdamW([{"params": params, "lr": lr},
                             {"params": [w, b], "lr": head_lr, "weight_decay": 0.0}])
    tok = body.tokenizer
    g = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    try:
        for t in body.parameters():
            t.requires_grad_(False)
        for t in params:
            t.requires_grad_(True)
        for _ in range(epochs):
            order = torch.randperm(len(pairs), generator=g).tolist()
            for start in range(0, len(order), batch_size):
                chunk = [pairs[i] for i in order[start:start + batch_size]]
                items = [it for p in chunk for it in p.items(sep)]
                acts = site_activations(body, encode_items(tok, items, max_length), site)
                cur = LinearHead(w, b, head.mean, head.scale, head.keep)
                r = cur.torch_score(acts)
                loss = bradley_terry_loss(r[0::2], r[1::2])
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
    finally:
        for t in body.parameters():
            t.requires_grad_(flags[id(t)])
            t.grad = None
    new = LinearHead(w.detach().double(), b.detach().double(), head.mean, head.scale, head.keep)
    return new, blocks, losses
