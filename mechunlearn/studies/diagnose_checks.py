"""What :func:`~mechunlearn.studies.diagnose.diagnose` refuses before any work: a model that
cannot generate responses (a masked LM / encoder such as BERT), so the judge never sees a
response to call bad."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mechunlearn.errors import ArchitectureError

#: Hugging Face class-name endings of models that generate text left to right.
GENERATIVE = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


class NotCausalLMError(ArchitectureError):
    """``diagnose`` was given a model that cannot generate responses (e.g. a masked LM)."""


def _refuse(what: str, arch: str) -> NotCausalLMError:
    return NotCausalLMError(
        f"{what} is a {arch}, which cannot generate responses: diagnose judges the model's "
        "greedy answers, so it needs a causal (decoder) language model (a *ForCausalLM "
        "folder). On an encoder use extract, directions or attribute (mechunlearn extract / "
        "directions / attribute) instead.")


def check_causal(model: Any, what: str = "model") -> None:
    """Refuse a model that cannot generate: a folder whose ``config.json`` names only
    non-generative architectures (read without loading weights), or a bridge whose Hugging
    Face model cannot generate (``can_generate()`` false, e.g. ``BertForMaskedLM``).

    A folder without ``architectures`` is let through (the loaded bridge is checked then).

    Raises:
        NotCausalLMError: naming ``what``, the architecture and what to do instead.
    """
    if isinstance(model, (str, os.PathLike)):
        try:
            cfg = json.loads((Path(model) / "config.json").read_text())
        except (OSError, ValueError):
            return  # load_bridge names a missing or broken folder
        archs = cfg.get("architectures") or []
        if archs and not any(str(a).endswith(GENERATIVE) for a in archs):
            raise _refuse(f"{what} {model}", "/".join(map(str, archs)))
        return
    hf = getattr(model, "original_model", None)
    if hf is None:
        return
    name = type(hf).__name__
    can = getattr(hf, "can_generate", None)
    generative = can() if callable(can) else name.endswith(GENERATIVE)
    if not generative:
        raise _refuse(what, name)
