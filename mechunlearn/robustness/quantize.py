"""Quantisation as an attack: does an edit survive the rounding a deployed model goes through?

Zhang et al., "Catastrophic Failure of LLM Unlearning via Quantization" (arXiv:2410.16454)
found that 4-bit quantisation of unlearned models restored much of the "forgotten" knowledge:
small weight updates fall inside one quantisation step of the original weights. Two schemes,
both applied in place and undone on exit (no model copy: a TransformerBridge does not always
survive ``copy.deepcopy`` after a backward pass):

* ``"int8"``: PyTorch's dynamic quantisation, :func:`torch.ao.quantization.quantize_dynamic`
  (int8 weights per tensor, activations quantised per batch at run time) on every dense layer.
  Hugging Face GPT-2 uses ``transformers.pytorch_utils.Conv1D`` (weight ``[in, out]``), which
  ``quantize_dynamic`` skips; each Conv1D is first rewritten as the equivalent ``nn.Linear``
  (weight transposed). The modules are swapped in place under the bridge and swapped back.
* ``"nf4"``: 4-bit NormalFloat weights in blocks of 64 (QLoRA's format, Dettmers et al.,
  "QLoRA: Efficient Finetuning of Quantized LLMs", arXiv:2305.14314) through
  ``bitsandbytes.functional.quantize_4bit`` / ``dequantize_4bit``, whose CPU path is plain
  PyTorch. The dequantised weights replace the dense weights (a 4-bit matmul dequantises the
  same way before multiplying); needs the optional ``bitsandbytes`` package.

Embeddings and norms stay in float32 in both (as with ``quantize_dynamic``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import nn

from mechunlearn.errors import ArchitectureError, ConfigError

Scheme = Literal["int8", "nf4"]
SCHEMES: tuple[str, ...] = ("int8", "nf4")


def has_bitsandbytes() -> bool:
    """Whether the optional ``bitsandbytes`` (the ``nf4`` scheme) is importable."""
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


def _conv1d_type() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    return Conv1D


def dense_layers(model: Any) -> list[tuple[nn.Module, str, nn.Module]]:
    """``(parent, attribute, module)`` for every ``nn.Linear`` and GPT-2 ``Conv1D`` under
    ``model`` (each module once, even when reachable by two paths)."""
    conv = _conv1d_type()
    kinds = (nn.Linear,) + ((conv,) if conv is not None else ())
    out, seen = [], set()
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, kinds) and id(child) not in seen:
                seen.add(id(child))
                out.append((parent, name, child))
    return out


def as_linear(mod: nn.Module) -> nn.Linear:
    """An ``nn.Linear`` computing the same map as ``mod`` (``Linear`` itself, or a GPT-2
    ``Conv1D`` whose weight ``[in, out]`` is transposed), float32, no gradient."""
    if isinstance(mod, nn.Linear):
        w, b = mod.weight, mod.bias
    else:
        w, b = mod.weight.t(), mod.bias
    lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
        lin.weight.copy_(w.float())
        if b is not None:
            lin.bias.copy_(b.float())
    return lin


def _int8(mod: nn.Module) -> nn.Module:
    from torch.ao.nn.quantized.dynamic import Linear as QLinear

    lin = as_linear(mod)
    lin.qconfig = torch.ao.quantization.default_dynamic_qconfig
    with warnings.catch_warnings():  # PyTorch's deprecation of quantised dtypes, known and
        # documented (docs/robustness.md: the move to torchao); not the user's business
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor")
        return QLinear.from_float(lin)


def _import_bnb() -> Any:
    """``bitsandbytes.functional``; its import-time warning about an optional CPU matmul
    kernel (the ``kernels`` package) is silenced: quantise/dequantise do not use it."""
    import logging

    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        import bitsandbytes.functional as bnbf
    finally:
        log.setLevel(level)
    return bnbf


def _nf4(w: torch.Tensor, blocksize: int = 64) -> torch.Tensor:
    try:
        bnbf = _import_bnb()
    except ImportError as e:
        raise ConfigError("4-bit (nf4) quantisation needs bitsandbytes (CPU path): pip install "
                          "'mechunlearn[quant4]' (or bitsandbytes>=0.50), or use scheme "
                          "'int8'.") from e
    q, state = bnbf.quantize_4bit(w.detach().float().clone(), blocksize=blocksize,
                                  quant_type="nf4")
    return bnbf.dequantize_4bit(q, state).to(w.dtype).reshape(w.shape)


@contextmanager
def quantized(model: Any, scheme: Scheme = "int8") -> Iterator[dict[str, Any]]:
    """Inside the block, ``model``'s dense layers are quantised with ``scheme`` (see the
    module docstring); on exit the original modules / weights are back, bit for bit.

    Yields ``{"scheme", "n_layers", "max_weight_change"}`` (the largest absolute change of a
    dense weight, 0 for a no-op). Inference only: quantised int8 layers have no gradient.

    Raises:
        ConfigError: unknown ``scheme``; ``nf4`` without bitsandbytes.
        ArchitectureError: the model has no ``nn.Linear``/``Conv1D`` layer.
    """
    if scheme not in SCHEMES:
        raise ConfigError(f"Unknown quantisation scheme {scheme!r}; choose from {SCHEMES}.")
    layers = dense_layers(model)
    if not layers:
        raise ArchitectureError(f"{type(model).__name__} has no nn.Linear or Conv1D layer "
                                "to quantise.")
    change = 0.0
    if scheme == "int8":
        swapped: list[tuple[nn.Module, str, nn.Module]] = []
        try:
            for parent, name, mod in layers:
                q = _int8(mod)
                wq = q.weight().dequantize()
                change = max(change, float((wq - as_linear(mod).weight.detach()).abs().max()))
                setattr(parent, name, q)
                swapped.append((parent, name, mod))
            yield {"scheme": scheme, "n_layers": len(layers), "max_weight_change": change}
        finally:
            for parent, name, mod in reversed(swapped):
                setattr(parent, name, mod)
        return
    # split q/k/v weights can be views of the fused qkv weight: quantise each storage once
    # (the first module seen) and snapshot every weight before changing any
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    todo, seen = [], set()
    for _, _, mod in layers:
        key = mod.weight.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            todo.append(mod.weight)
    try:
        with torch.no_grad():
            saved = [(w, w.detach().clone()) for _, _, m in layers for w in [m.weight]]
            for w in todo:
                new = _nf4(w)
                change = max(change, float((new - w).abs().max()))
                w.copy_(new)
        yield {"scheme": scheme, "n_layers": len(todo), "max_weight_change": change}
    finally:
        with torch.no_grad():
            for w, old in reversed(saved):
                w.copy_(old)
