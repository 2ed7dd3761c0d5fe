"""What :func:`~mechunlearn.studies.diagnose.diagnose` (and ``mechunlearn diagnose``) refuses
before any work: a model that cannot generate responses (a masked LM / encoder such as BERT),
so the judge never sees a response to call bad (:func:`check_causal`); inputs whose bias
direction contrast has fewer distinct prompts than its held-out folds
(:func:`check_contrast_size`); ordinary prompts that are empty, or none left clean
(:func:`check_ordinary`). The last two read only the JSONL files and run the judge on the
training responses (no model), so a run that would fail after minutes fails at once."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mechunlearn.errors import ArchitectureError, ConfigError

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


#: how each input of :func:`check_inputs` is named in messages (the CLI passes its flags)
API_NAMES = {"train": "train", "bad": "bad", "ordinary": "ordinary", "pos": "pos",
             "neg": "neg", "reference": "reference", "judge": "judge",
             "n_forget": "config.n_forget"}


def contrast_folds() -> int:
    """Folds of the bias direction's held-out evidence (``fit_direction`` keeps the finders'
    default, :data:`mechunlearn.directions.N_SPLITS`); each fold needs one distinct prompt."""
    from mechunlearn.directions import N_SPLITS

    return N_SPLITS


def _distinct(items: list[Any]) -> int:
    return len({x if isinstance(x, str) else x[0] for x in items})


def check_contrast_size(train: Any, bad: Any, pos: Any, neg: Any, reference: Any,
                        n_forget: int, heldout_fraction: float = 0.5, seed: int = 0,
                        names: dict[str, str] | None = None) -> None:
    """Refuse, before any model work, inputs whose bias-direction contrast cannot fill the
    held-out folds (:func:`contrast_folds`, 5): prompts are held out whole, so the contrast
    :func:`~mechunlearn.studies.contrast.fit_direction` picks needs that many distinct
    prompts: ``pos``/``neg`` (distinct texts or prompts of both files together), else
    ``reference`` (distinct prompts in the attribution half of ``bad``), else the attributed
    preference triples (at most ``n_forget`` of them; prompt/response training data has no
    such contrast and is not checked).

    Raises:
        EmptyDataError: naming the input to change (``names``: input -> flag) and the minimum.
    """
    from mechunlearn.errors import EmptyDataError
    from mechunlearn.studies.cases import split_prompts
    from mechunlearn.studies.data import load_bad, load_texts, load_train

    n = {**API_NAMES, **(names or {})}
    need = contrast_folds()
    if pos is not None and neg is not None:
        got = _distinct(load_texts(pos) + load_texts(neg))
        if got < need:
            raise EmptyDataError(
                f"{n['pos']} {pos} and {n['neg']} {neg} hold {got} distinct prompt(s) together; "
                f"the direction's held-out evidence holds whole prompts out over {need} folds, "
                f"so it needs at least {need}: add samples with other prompts.")
        return
    if reference is not None:
        prompts, _ = load_bad(bad)
        attr, _ = split_prompts(prompts, heldout_fraction, seed)
        got = len({prompts[i] for i in attr})
        if got < need:
            raise EmptyDataError(
                f"{n['bad']} {bad}: the direction of the tuned model vs {n['reference']} is "
                f"fitted on the attribution half of the bad prompts, {got} distinct prompt(s) here "
                f"({len(set(prompts))} in the file); its held-out evidence needs at least "
                f"{need} ({need} folds): add distinct bad prompts (about {2 * need}), or give "
                f"{n['pos']}/{n['neg']} files.")
        return
    triples = [p for p in load_train(train) if p.rejected is not None]
    if not triples:
        return  # no contrast: the report says so, nothing fails
    got = len({p.prompt for p in triples})
    if n_forget < need or got < need:
        what = (f"{n['n_forget']} {n_forget} is too small" if n_forget < need else
                f"{n['train']} {train} holds only {got} distinct preference prompt(s)")
        raise EmptyDataError(
            f"{what}: the bias direction (chosen vs rejected of the attributed pairs) holds "
            f"whole prompts out over {need} folds, so it needs at least {need} distinct "
            f"prompts: " + (f"pass {n['n_forget']} {need} or more" if n_forget < need else
                            "add preference records with other prompts")
            + f", or give {n['reference']} or {n['pos']}/{n['neg']}.")


def check_ordinary(train: Any, ordinary: Any, judge: Any,
                   names: dict[str, str] | None = None) -> None:
    """Refuse, before any model work, ordinary prompts the verifier could not use: an
    ``ordinary`` file with an empty (or blank) prompt, or, without ``ordinary``, training
    data in which the judge calls every chosen response bad (no clean training prompt is
    left to measure the good-behaviour rate and KL on) or a clean pair's prompt is blank.

    Raises:
        EmptyDataError: naming the file or flags (``names``: input -> flag) and what to do.
    """
    from mechunlearn.errors import EmptyDataError
    from mechunlearn.studies.data import load_prompts, load_train
    from mechunlearn.studies.judge import describe, judge_all, parse_judge

    n = {**API_NAMES, **(names or {})}
    if ordinary is not None:
        prompts = load_prompts(ordinary, "ordinary")
        blank = [i for i, p in enumerate(prompts) if not p.strip()]
        if blank:
            raise EmptyDataError(
                f"{n['ordinary']} {ordinary}: {len(blank)} of its {len(prompts)} prompt(s) are "
                f"empty (the first is record {blank[0] + 1}); an empty prompt cannot be "
                "answered: drop those records.")
        return
    judge_fn = parse_judge(judge) if isinstance(judge, str) else judge
    tr = load_train(train)
    clean = [p for p, b in zip(tr, judge_all(judge_fn, [p.chosen for p in tr])) if not b]
    if not clean:
        raise EmptyDataError(
            f"{n['judge']} ({describe(judge_fn)}) calls the chosen response of all {len(tr)} "
            f"{n['train']} {train} pairs bad, so no training prompt is left as an ordinary "
            f"prompt (good-behaviour rate and KL): pass {n['ordinary']} FILE with ordinary "
            f"prompts, or a narrower {n['judge']}.")
    blank = [p.id for p in clean if not p.prompt.strip()]
    if blank:
        raise EmptyDataError(
            f"{n['train']} {train}: record id {blank[0]!r} has an empty prompt and would be "
            f"used as an ordinary prompt ({len(blank)} such): drop it, or pass "
            f"{n['ordinary']} FILE.")


def check_config(cfg: Any, methods: tuple[str, ...]) -> None:
    """Validate a :class:`~mechunlearn.studies.diagnose.DiagnoseConfig` (``methods``: the
    known edit methods).

    Raises:
        ConfigError: an unknown edit method, a non-bool ``robustness``, a count that is not an
            int >= 1, or ``robustness_ablation_layers`` not None / a non-empty tuple of
            block indices >= 0; the message names the field and the value.
    """
    bad = [m for m in cfg.methods if m not in methods]
    if bad:
        raise ConfigError(f"Unknown edit methods {bad}; choose from {methods}.")
    if not isinstance(cfg.robustness, bool):
        raise ConfigError(f"robustness must be True or False, got {cfg.robustness!r}.")
    for f in ("k", "n_forget", "max_retain", "max_new_tokens", "max_ordinary", "batch_size",
              "robustness_adjacent", "robustness_relearn_steps") + (
                  ("robustness_prompts",) if cfg.robustness_prompts is not None else ()):
        v = getattr(cfg, f)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{f} must be an int >= 1, got {v!r}.")
    al = cfg.robustness_ablation_layers
    if al is not None and (not al or any(isinstance(v, bool) or not isinstance(v, int)
                                         or v < 0 for v in al)):
        raise ConfigError("robustness_ablation_layers must be None (all blocks) or a "
                          f"non-empty tuple of block indices >= 0, got {al!r}.")
