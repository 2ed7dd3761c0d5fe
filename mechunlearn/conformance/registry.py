"""The check registry and the shared context checks read from.

A check is a function ``fn(ctx: Context) -> list[Row]`` registered under a name with
:func:`register`. Rows say what was compared, the measured value, the tolerance and a status:
``"ok"``, ``"FAIL"`` or ``"n/a"`` (the property does not apply to this architecture; the detail
says why). A check that raises is recorded as one ``FAIL`` row with the error, never hidden.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

OK, FAIL, NA = "ok", "FAIL", "n/a"


@dataclass(frozen=True)
class Row:
    """One verified property.

    Attributes:
        check: registered check name, e.g. ``"residual_identity"``.
        target: what was checked, e.g. ``"resid_mid = resid_pre + attn_out"``.
        status: ``"ok"``, ``"FAIL"`` or ``"n/a"``.
        value: measured max abs difference (or another figure named in ``detail``); NaN if none.
        tol: tolerance ``value`` had to stay under (NaN if none).
        detail: short explanation (always set for ``FAIL`` and ``n/a``).
        required: the library relies on it: a ``FAIL`` makes ``mechunlearn doctor`` exit non-zero.
    """

    check: str
    target: str
    status: str
    value: float = float("nan")
    tol: float = float("nan")
    detail: str = ""
    required: bool = True


@dataclass(frozen=True)
class Check:
    """A registered check: ``fn(ctx) -> list[Row]``, with a one-line description."""

    name: str
    fn: Callable[[Context], list[Row]]
    doc: str


CHECKS: dict[str, Check] = {}


def register(name: str, doc: str = "") -> Callable[[Callable[[Context], list[Row]]], Callable]:
    """Decorator registering ``fn(ctx) -> list[Row]`` as check ``name`` (later ones replace)."""

    def deco(fn: Callable[[Context], list[Row]]) -> Callable[[Context], list[Row]]:
        CHECKS[name] = Check(name, fn, doc or (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return deco


def compare(check: str, target: str, a: Tensor, b: Tensor, rtol: float = 1e-5,
            required: bool = True, detail: str = "") -> Row:
    """Row comparing tensors: ``max|a - b| <= rtol * (1 + max|b|)`` (fp32 tolerance)."""
    if tuple(a.shape) != tuple(b.shape):
        return Row(check, target, FAIL, detail=f"shapes differ: {tuple(a.shape)} vs "
                   f"{tuple(b.shape)}", required=required)
    a64, b64 = a.detach().double().cpu(), b.detach().double().cpu()
    diff = float((a64 - b64).abs().max()) if a.numel() else 0.0
    tol = rtol * (1.0 + float(b64.abs().max()) if b.numel() else 1.0)
    return Row(check, target, OK if diff <= tol else FAIL, diff, tol, detail, required)


def max_diff(a: Tensor, b: Tensor) -> float:
    """``max|a - b|`` in float64."""
    return float((a.detach().double().cpu() - b.detach().double().cpu()).abs().max())


@dataclass
class Context:
    """What checks share: the model, its folder, a fixed token batch and lazy caches.

    Args:
        model: a ``TransformerBridge`` booted with ``boot_transformers``.
        folder: the model's ``save_pretrained`` folder (for the independent plain HF copy);
            default: the tokenizer's ``name_or_path`` when that is a folder.
        n_tokens: tokens per row of the probe batch (2 rows, ids drawn with seed 0).
    """

    model: Any
    folder: Path | None = None
    n_tokens: int = 7
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.folder is None:
            name = getattr(getattr(self.model, "tokenizer", None), "name_or_path", "") or ""
            if name and (Path(name) / "config.json").is_file():
                self.folder = Path(name)
        elif not isinstance(self.folder, Path):
            self.folder = Path(os.fspath(self.folder))

    # ---------------------------------------------------------------- model facts
    @property
    def hf(self) -> Any:
        """The wrapped Hugging Face model (shares weights with the bridge)."""
        return self.model.original_model

    @property
    def model_type(self) -> str:
        return str(getattr(self.hf.config, "model_type", "?"))

    @property
    def n_layers(self) -> int:
        return int(self.model.cfg.n_layers)

    @property
    def d_model(self) -> int:
        return int(self.model.cfg.d_model)

    @property
    def causal(self) -> bool:
        """True for causal LMs (decoders); False for encoders such as BERT."""
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        names = {v for vs in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
                 for v in ((vs,) if isinstance(vs, str) else vs)}
        return type(self.hf).__name__ in names

    @property
    def parallel(self) -> bool:
        """Attention and MLP read the same input and add in parallel (GPT-NeoX, GPT-J, Phi)."""
        return type(self.model.blocks[0]).__name__.startswith("Parallel")

    @property
    def post_ln(self) -> bool:
        """LayerNorm after each residual add (BERT, OPT with ``do_layer_norm_before=False``)."""
        cfg = self.hf.config
        return self.model_type == "bert" or getattr(cfg, "do_layer_norm_before", True) is False

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @cached_property
    def ids(self) -> Tensor:
        """``[2, n_tokens]`` token ids (seed 0, avoiding the first 4 ids, often special)."""
        g = torch.Generator().manual_seed(0)
        lo = 4 if int(self.model.cfg.d_vocab) > 8 else 0
        return torch.randint(lo, int(self.model.cfg.d_vocab), (2, self.n_tokens), generator=g)

    @property
    def mask(self) -> Tensor:
        return torch.ones_like(self.ids)

    @cached_property
    def cache(self) -> dict[str, Tensor]:
        """Every hook's activation on :attr:`ids` (one ``run_with_cache``)."""
        with torch.no_grad():
            logits, cache = self.model.run_with_cache(
                self.ids.to(self.device), attention_mask=self.mask.to(self.device))
        out = {k: v.detach().cpu() for k, v in cache.items()}
        out["__logits__"] = logits.detach().float().cpu()
        return out

    @cached_property
    def plain(self) -> Any:
        """An independent plain ``transformers`` copy loaded from :attr:`folder` (or None)."""
        if self.folder is None:
            return None
        return type(self.hf).from_pretrained(str(self.folder)).eval()

    def plain_module(self, module: Any) -> Any:
        """The plain copy's module at the same place as ``module`` of the wrapped model.

        TransformerBridge registers aliases (``self_attn.o`` for ``o_proj``); the first name
        that exists in the plain copy is used. Raises ``KeyError`` if none does."""
        names = [n.replace("._original_component", "")
                 for n, m in self.hf.named_modules(remove_duplicate=False) if m is module]
        for n in names:
            try:
                return self.plain.get_submodule(n)
            except AttributeError:
                continue
        raise KeyError(f"no module of the plain copy matches {names or type(module).__name__}")
