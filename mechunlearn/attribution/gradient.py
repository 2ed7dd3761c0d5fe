"""Gradient similarity (TracIn-style) at a Site's activation or on chosen parameters.

``gradient_features`` turns each sample into the gradient of its loss:

* ``params=None`` (default): the gradient with respect to the Site's activation, read with a
  backward hook on the hook point (no ``retain_grad``) and reduced over token positions like the
  Site's features (``"response_mean"``/``"mean"``/int; ``"last"`` is refused because a token's
  own activation gets no gradient from an NLL on the tokens up to it). ``[n, d]``.
* ``params=[names]``: the per-sample gradient of those parameters, flattened, optionally
  compressed by a seeded count-sketch random projection to ``projection_dim`` dims (unbiased
  for inner products, ``O(#params)`` memory). One backward pass per sample.

Losses: ``"nll"`` -- mean negative log-likelihood of the response tokens of ``(prompt,
response)`` pairs; ``"dpo"`` -- ``-log sigmoid(beta * ((lc - lc_ref) - (lr - lr_ref)))`` for
``(prompt, chosen, rejected)`` triples with a reference model (``l`` = summed response
log-probability); its activation gradient is the sum of the chosen and rejected sequences'.

``GradSim`` then ranks training samples by cosine (or dot = TracIn with one checkpoint) between
the query's gradient (the loss of the bad response) and each training sample's gradient;
positive = training on the sample lowered the query's loss (a proponent).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from mechunlearn.attribution.similarity import RepSim
from mechunlearn.errors import ConfigError, EmptyDataError, HookNotFiredError, check_finite
from mechunlearn.features import Features, model_fingerprint
from mechunlearn.hooks import add_hooks
from mechunlearn.lm import response_logprobs
from mechunlearn.sites import Site
from mechunlearn.tokens import TokenBatch, check_fits_context, model_tokenizer, tokenize

Loss = Literal["nll", "dpo"]


def _response_logprob(model: Any, tb: TokenBatch) -> tuple[Tensor, Tensor]:
    """Summed and mean log-prob of response tokens per row: ``([b], [b])``."""
    dev = next(model.parameters()).device
    ids = tb.input_ids.to(dev)
    logits = model(ids, attention_mask=tb.attention_mask.to(dev))
    s, n = response_logprobs(logits, ids, (tb.response_mask & tb.attention_mask.bool()).to(dev))
    if bool((n == 0).any()):
        raise EmptyDataError("A sample has no response tokens after the first token; cannot "
                             "compute a response loss.")
    return s, s / n


def _batch(model: Any, pairs: Sequence[tuple[str, str]]) -> TokenBatch:
    tok = model_tokenizer(model)
    if tok is None:
        raise ConfigError("gradient_features needs a model with a tokenizer.")
    tb = tokenize(tok, list(pairs))
    check_fits_context(model, tb)
    return tb


def _losses(model: Any, ref_model: Any, items: Sequence[Any], loss: Loss, beta: float
            ) -> tuple[Tensor, TokenBatch]:
    """Per-sample losses ``[b]`` and the token batch fed to ``model`` (2b rows for DPO)."""
    if loss == "nll":
        tb = _batch(model, [(p, r) for p, r in items])
        return -_response_logprob(model, tb)[1], tb
    b = len(items)
    tb = _batch(model, [(p, c) for p, c, _ in items] + [(p, r) for p, _, r in items])
    s, _ = _response_logprob(model, tb)
    with torch.no_grad():
        s_ref, _ = _response_logprob(ref_model, tb)
    margin = (s[:b] - s_ref[:b]) - (s[b:] - s_ref[b:])
    return -F.logsigmoid(beta * margin), tb


def _check_items(items: Sequence[Any], loss: Loss) -> None:
    want = 2 if loss == "nll" else 3
    for i, it in enumerate(items):
        if not (isinstance(it, (tuple, list)) and len(it) == want and all(isinstance(s, str) for s in it)):
            shape = "(prompt, response)" if loss == "nll" else "(prompt, chosen, rejected)"
            raise ConfigError(f"Item {i} is {it!r}; loss={loss!r} expects {shape} tuples of str.")


def gradient_features(
    model: Any,
    items: Sequence[Any],
    site: Site | Sequence[Site] | None = None,
    loss: Loss = "nll",
    ref_model: Any = None,
    beta: float = 0.1,
    params: Sequence[str] | None = None,
    projection_dim: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    ids: Sequence[str] | None = None,
) -> Features | dict[Site, Features]:
    """Per-sample loss gradients as features (see module docstring).

    Args:
        model: TransformerBridge with a tokenizer (weights are not modified; ``.grad`` untouched).
        items: ``(prompt, response)`` pairs (``loss="nll"``) or ``(prompt, chosen, rejected)``.
        site: Site (or several: one backward pass serves all) whose activation gradient is
            taken (``params=None``).
        loss: ``"nll"`` or ``"dpo"`` (needs ``ref_model``).
        params: parameter names (``model.named_parameters()``) for parameter gradients instead.
        projection_dim: count-sketch dimension for parameter gradients (``None``: keep all).
        seed: seed of the projection.
        batch_size: samples per backward pass (activation gradients only).

    Returns:
        :class:`Features` ``[n, d]`` (``d`` = Site width, #params or ``projection_dim``), with
        ``site`` = the Site (activation) or ``None`` and the model's fingerprint; a dict
        ``{Site: Features}`` when several Sites are given.
    """
    if loss not in ("nll", "dpo"):
        raise ConfigError(f"loss must be 'nll' or 'dpo', got {loss!r}.")
    if loss == "dpo" and ref_model is None:
        raise ConfigError("loss='dpo' needs a reference model (ref_model=...).")
    if len(items) == 0:
        raise EmptyDataError("gradient_features() got no samples.")
    _check_items(items, loss)
    id_t = tuple(str(i) for i in range(len(items))) if ids is None else tuple(str(i) for i in ids)
    fp = model_fingerprint(model)
    if params is None:
        if site is None:
            raise ConfigError("Pass a Site (activation gradients) or params=[names].")
        single = isinstance(site, Site)
        site_list = [site] if single else list(site)
        for s_ in site_list:
            if s_.position in ("last", "all"):
                raise ConfigError(
                    f"Site {s_.key}: gradient features need position 'response_mean', 'mean' or "
                    "an int; the last token's activation gets no gradient from the response loss."
                )
            s_.resolve(model)
        parts = [_act_grads(model, ref_model, items[s : s + batch_size], site_list, loss, beta)
                 for s in range(0, len(items), batch_size)]
        out = {}
        for j, s_ in enumerate(site_list):
            vals = torch.cat([p[j] for p in parts])
            check_finite(f"gradient features at {s_.key}", vals)
            out[s_] = Features(vals, id_t, s_, fp)
        return out[site_list[0]] if single else out
    vals = _param_grads(model, ref_model, items, list(params), loss, beta, projection_dim, seed)
    check_finite("gradient features", vals)
    return Features(vals, id_t, site if isinstance(site, Site) else None, fp)


def _act_grads(model: Any, ref_model: Any, items: Sequence[Any], sites: list[Site], loss: Loss,
               beta: float) -> list[Tensor]:
    names = list(dict.fromkeys(s.hook_name for s in sites))
    grads: dict[str, list[Tensor]] = {n: [] for n in names}

    def grab(name: str):
        def fn(g: Tensor) -> None:
            grads[name].append(g.detach())
            return None

        return fn

    emb = _upstream_param(model)
    handles = add_hooks(model, [(n, grab(n)) for n in names], dir="bwd")
    try:
        with torch.enable_grad():
            losses, tb = _losses(model, ref_model, items, loss, beta)
            torch.autograd.grad(losses.sum(), [emb], allow_unused=True)
    finally:
        handles.remove()
    out = []
    b = len(items)
    for s in sites:
        gs = grads[s.hook_name]
        if not gs:
            raise HookNotFiredError(f"Backward hook at {s.hook_name} never fired.")
        g = sum(gs[1:], gs[0]) if len(gs) > 1 else gs[0]
        red = s.reduce(g.float(), tb.attention_mask, tb.response_mask).cpu()  # pool on device
        out.append(red[:b] + red[b:] if loss == "dpo" else red)
    return out


def _upstream_param(model: Any) -> Tensor:
    """A parameter upstream of every block (the input embedding) to differentiate against."""
    hf = getattr(model, "original_model", model)
    get = getattr(hf, "get_input_embeddings", None)
    if get is not None and get() is not None:
        w = get().weight
        if w.requires_grad:
            return w
    for p in model.parameters():
        if p.requires_grad:
            return p
    raise ConfigError("The model has no parameter that requires grad; cannot take gradients.")


def _param_grads(model: Any, ref_model: Any, items: Sequence[Any], names: list[str],
                 loss: Loss, beta: float, proj: int | None, seed: int) -> Tensor:
    named = dict(model.named_parameters())
    missing = [n for n in names if n not in named]
    if missing or not names:
        raise ConfigError(f"Unknown parameter names {missing or names}; see model.named_parameters().")
    ps = [named[n] for n in names]
    total = sum(p.numel() for p in ps)
    sketch = None
    if proj is not None:
        if proj < 1:
            raise ConfigError(f"projection_dim must be >= 1, got {proj}.")
        gen = torch.Generator().manual_seed(seed)
        sketch = (torch.randint(0, proj, (total,), generator=gen),
                  torch.randint(0, 2, (total,), generator=gen).float() * 2 - 1)
    rows = []
    for it in items:
        with torch.enable_grad():
            losses, _ = _losses(model, ref_model, [it], loss, beta)
            gs = torch.autograd.grad(losses.sum(), ps, allow_unused=True)
        flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float().cpu()
                          for g, p in zip(gs, ps)])
        if sketch is not None:
            flat = torch.zeros(proj).index_add_(0, sketch[0], flat * sketch[1])
        rows.append(flat)
    return torch.stack(rows)


class GradSim(RepSim):
    """TracIn-style ranking: similarity of gradient features (from :func:`gradient_features`).

    ``GradSim(train_grads, metric="cosine" | "dot").attribute(query_grad)``; same interface
    and result as :class:`RepSim` with ``method="gradsim"``.
    """

    method = "gradsim"
