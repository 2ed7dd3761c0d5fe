"""Feature extraction at Sites: one batched forward pass, stopped after the last needed hook.

``extract(model, data, sites)`` returns :class:`Features` (one ``[n, d]`` tensor per Site).
The forward pass is cut short by raising a private exception from the last hook that is
needed (``stop_at_layer`` would still run the unembedding when the last block is needed), and
every hook is removed in ``finally``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from mechunlearn import fastpath
from mechunlearn.errors import (
    ConfigError,
    DTypeError,
    HookNotFiredError,
    LayoutError,
    ShapeError,
    check_finite,
)
from mechunlearn.hooks import add_hooks
from mechunlearn.provenance import current_fingerprint, model_fingerprint  # noqa: F401 (re-export)
from mechunlearn.sites import Site, canonical_hook_name, check_sites
from mechunlearn.tokens import Data, TokenBatch, as_token_batch, check_fits_context


@dataclass(frozen=True)
class Features:
    """Features of ``n`` samples at one Site.

    Attributes:
        values: ``[n, d]`` float tensor (``[n, pos, d]`` for ``position="all"``, padded).
        ids: ``n`` sample ids (str).
        site: the Site they were read at.
        fingerprint: hash of the model's weights (see :func:`model_fingerprint`).
        mask: ``[n, pos]`` attention mask for ``position="all"``, else ``None``.
    """

    values: Tensor
    ids: tuple[str, ...]
    site: Site
    fingerprint: str
    mask: Tensor | None = None

    def __post_init__(self) -> None:
        if self.values.shape[0] != len(self.ids):
            raise ShapeError(
                f"Features: {self.values.shape[0]} rows but {len(self.ids)} ids."
            )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def d(self) -> int:
        """Feature dimension."""
        return int(self.values.shape[-1])

    def numpy(self) -> Any:
        """Values as a numpy array."""
        return self.values.detach().cpu().numpy()

    def subset(self, idx: Sequence[int] | Tensor) -> Features:
        """Rows ``idx`` (keeps site and fingerprint)."""
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        ids = tuple(self.ids[int(i)] for i in idx_t)
        mask = self.mask[idx_t] if self.mask is not None else None
        return Features(self.values[idx_t], ids, self.site, self.fingerprint, mask)


def check_token_ids(model: Any, input_ids: Tensor) -> None:
    """Raise :class:`ShapeError` if any id in ``input_ids [n, pos]`` is outside the model's
    vocabulary ``[0, cfg.d_vocab)`` (an embedding lookup would fail or read garbage)."""
    vocab = getattr(getattr(model, "cfg", None), "d_vocab", None)
    if input_ids.numel() == 0 or vocab is None or int(vocab) <= 0:
        return
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or hi >= int(vocab):
        raise ShapeError(
            f"Token ids must be in [0, {int(vocab)}) (the model's vocabulary), got ids "
            f"{lo}..{hi}; were they made by another tokenizer?"
        )


class _Stop(Exception):
    """Raised from the last needed hook to end the forward pass early."""


def _device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def run_and_capture(
    model: Any,
    batch: TokenBatch,
    hook_names: Sequence[str],
    stop_early: bool = True,
) -> dict[str, Tensor]:
    """One forward pass; returns ``{hook_name: activation}`` for each requested hook.

    Stops after the last requested hook fires when ``stop_early`` (a fast path: the first
    time per model class in a process its activations are compared with a full forward
    pass, see :mod:`mechunlearn.fastpath`; on mismatch it is switched off with a warning).

    Raises:
        HookNotFiredError: a requested hook did not fire.
    """
    canon: dict[str, list[str]] = {}
    for n in hook_names:
        canon.setdefault(canonical_hook_name(model, n), []).append(n)
    key = f"early-stop:{type(model).__name__}"
    use_stop = stop_early and fastpath.status().get(key, True)
    acts = _capture(model, batch, canon, use_stop)
    if use_stop and key not in fastpath.status() and all(n in acts for n in hook_names):
        def compare() -> tuple[bool, float]:
            full = _capture(model, batch, canon, False)
            return fastpath.close(torch.cat([acts[n].float().flatten() for n in hook_names]),
                                  torch.cat([full[n].float().flatten() for n in hook_names]))

        if not fastpath.self_check(key, compare, "Early-stopped extraction"):
            acts = _capture(model, batch, canon, False)
    missing = [n for n in hook_names if n not in acts]
    if missing:
        raise HookNotFiredError(f"Hook(s) {missing} never fired during the forward pass.")
    return acts


def _capture(model: Any, batch: TokenBatch, canon: dict[str, list[str]], stop_early: bool,
             ) -> dict[str, Tensor]:
    """The forward pass of :func:`run_and_capture` (``canon``: canonical name -> names)."""
    acts: dict[str, Tensor] = {}

    def make(names: list[str]):
        def fn(act: Tensor) -> None:
            for n in names:
                acts[n] = act.detach()
            if stop_early and all(any(k in acts for k in v) for v in canon.values()):
                raise _Stop
            return None

        return fn

    handles = add_hooks(model, [(v[0], make(v)) for v in canon.values()])
    dev = _device(model)
    try:
        with torch.no_grad():
            model(
                batch.input_ids.to(dev),
                attention_mask=batch.attention_mask.to(dev),
                return_type=None,
            )
    except _Stop:
        pass
    finally:
        handles.remove()
    return acts


def extract(
    model: Any,
    data: Data,
    sites: Site | Sequence[Site],
    batch_size: int = 32,
    ids: Sequence[str] | None = None,
    attention_mask: Tensor | None = None,
    response_mask: Tensor | None = None,
    padding_side: Literal["right", "left"] = "right",
    dtype: torch.dtype = torch.float32,
    progress: bool | None = None,
) -> Features | dict[Site, Features]:
    """Features of ``data`` at one or more Sites.

    Args:
        model: a ``TransformerBridge`` (anything with ``hook_dict`` and a forward taking
            ``attention_mask=``).
        data: texts, ``(prompt, response)`` pairs, a :class:`TokenBatch`, or an int tensor
            ``[n, pos]`` (then pass ``attention_mask``/``response_mask`` as needed).
        sites: one Site (returns :class:`Features`) or several (returns ``{Site: Features}``).
        batch_size: samples per forward pass.
        ids: sample ids (default ``"0".."n-1"``).
        dtype: dtype of the returned values (float32 default).
        progress: show a progress bar (default: when there are more than 8 batches).

    Returns:
        ``Features`` with ``values [n, d]`` (``[n, pos, d]`` for ``position="all"``).
    """
    single = isinstance(sites, Site)
    site_list = check_sites(model, sites, "extract")
    for s in site_list:
        if s.layout == "head_q_k":
            raise LayoutError(
                f"extract() at {s.key}: attention patterns are [batch, head, query, key]; a "
                "sample's row has one entry per key, so its size depends on the padded length "
                "and is no fixed feature space. Use blocks.L.attn.hook_z (per head, with "
                "Site(..., head=h)) or blocks.L.hook_attn_out, or Site.reduce on a "
                "run_with_cache pattern yourself."
            )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise DTypeError(f"extract(dtype=...) must be a floating torch dtype, got {dtype!r}.")
    tb = as_token_batch(model, data, padding_side, attention_mask, response_mask)
    check_fits_context(model, tb)
    check_token_ids(model, tb.input_ids)
    n = len(tb)
    if n == 0:
        from mechunlearn.errors import EmptyDataError

        raise EmptyDataError("extract() got no samples.")
    id_list = tuple(str(i) for i in range(n)) if ids is None else tuple(str(i) for i in ids)
    if len(id_list) != n:
        raise ShapeError(f"Got {len(id_list)} ids for {n} samples.")
    if len(set(id_list)) != n:
        raise ConfigError("Sample ids must be unique.")
    hook_names = list(dict.fromkeys(s.hook_name for s in site_list))
    n_batches = (n + batch_size - 1) // batch_size
    show = n_batches > 8 if progress is None else progress
    out: dict[Site, list[Tensor]] = {s: [] for s in site_list}
    masks: list[Tensor] = []
    for start in tqdm(range(0, n, batch_size), total=n_batches, disable=not show, desc="extract"):
        batch = tb[start : start + batch_size]
        acts = run_and_capture(model, batch, hook_names)
        for s in site_list:
            out[s].append(s.reduce(acts[s.hook_name], batch.attention_mask, batch.response_mask).to("cpu", dtype))
        masks.append(batch.attention_mask)
    fp = current_fingerprint(model)
    result: dict[Site, Features] = {}
    for s in site_list:
        if s.position == "all":
            vals, mask = _pad_cat(out[s], masks)
        else:
            vals, mask = torch.cat(out[s]), None
        check_finite(f"Features at {s.key}", vals)
        result[s] = Features(vals, id_list, s, fp, mask)
    return result[site_list[0]] if single else result


def _pad_cat(chunks: list[Tensor], masks: list[Tensor]) -> tuple[Tensor, Tensor]:
    p = max(c.shape[1] for c in chunks)
    vals = torch.cat([torch.nn.functional.pad(c, (0, 0, 0, p - c.shape[1])) for c in chunks])
    mask = torch.cat([torch.nn.functional.pad(m, (0, p - m.shape[1])) for m in masks])
    return vals, mask
