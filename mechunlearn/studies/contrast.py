"""Bias directions at the chosen Site from a contrast the user names, with held-out evidence.

Contrasts, in order of preference:

* ``"files"``: X+ and X− given as two lists (JSONL files ``--pos``/``--neg``) of prompts
  (features at the last prompt token, where the model decides) or (prompt, response) pairs
  (response mean);
* ``"models"``: the tuned model (X+) and the reference model (X−) on the same prompts (the
  attribution half of the bad prompts), at the last prompt token;
* ``"attributed"``: the attributed training pairs' chosen (X+) vs rejected (X−) responses,
  tuned model, response mean (needs preference triples).

Each contrast gives a difference of means and the PCA bias/variance ranking (both with
held-out AUC and a permutation p-value, grouped so both members of a prompt are held out
together). The difference of means is the direction the edits remove.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mechunlearn.errors import ConfigError, EmptyDataError, MechUnlearnError
from mechunlearn.features import extract
from mechunlearn.sites import Site
from mechunlearn.studies.data import TrainPair
from mechunlearn.studies.format import PromptFormat
from mechunlearn.tokens import model_tokenizer


@dataclass(frozen=True)
class ContrastResult:
    """``direction`` (difference of means, a Directions; ``None`` when no contrast could be
    formed), the evidence ``table`` (one row per finder) and a description."""

    direction: Any
    table: pd.DataFrame
    contrast: str
    why_none: str = ""


def _features(model: Any, fmt: PromptFormat, items: Sequence[Any], site: Site) -> Any:
    tok = model_tokenizer(model)
    if all(isinstance(x, str) for x in items):
        return extract(model, fmt.encode_prompts(tok, list(items)), site.with_position("last"))
    if all(isinstance(x, tuple) and len(x) == 2 for x in items):
        tb = fmt.encode_pairs(tok, [p for p, _ in items], [r for _, r in items])
        return extract(model, tb, site.with_position("response_mean"))
    raise ConfigError("A contrast side must be all prompts (text records) or all "
                      "(prompt, response) pairs, not a mix.")


def _group(items: Sequence[Any]) -> list[str]:
    return [x if isinstance(x, str) else x[0] for x in items]


def fit_direction(model: Any, fmt: PromptFormat, site: Site, *, pos: Sequence[Any] | None = None,
                  neg: Sequence[Any] | None = None, reference: Any = None,
                  prompts: Sequence[str] = (), attributed: Sequence[TrainPair] = (),
                  n_permutations: int = 50) -> ContrastResult:
    """Fit the bias direction at ``site``'s hook from the first available contrast.

    Args:
        pos, neg: X+ / X− prompts or (prompt, response) pairs (both or neither).
        reference: reference model for the tuned-vs-reference contrast on ``prompts``.
        attributed: attributed training pairs (chosen vs rejected).
    """
    from mechunlearn.directions import mean_diff, pca_bias

    if (pos is None) != (neg is None):
        raise ConfigError("Give both --pos and --neg (X+ and X−), or neither.")
    if pos is not None:
        fp, fn = _features(model, fmt, pos, site), _features(model, fmt, neg, site)
        at = "last prompt token" if fp.site.position == "last" else "response mean"
        groups = _group(pos) + _group(neg)
        how = f"files: {len(pos)} X+ vs {len(neg)} X− samples ({at})"
    elif reference is not None:
        if len(set(prompts)) < 2:
            raise EmptyDataError("The tuned-vs-reference contrast needs at least 2 prompts.")
        tb = fmt.encode_prompts(model_tokenizer(model), list(prompts))
        s = site.with_position("last")
        fp, fn = extract(model, tb, s), extract(reference, tb, s)
        groups = list(prompts) * 2
        how = f"models: tuned vs reference on {len(prompts)} bad prompts (last prompt token)"
    else:
        trip = [p for p in attributed if p.rejected is not None]
        if len(trip) < 2:
            return ContrastResult(None, pd.DataFrame(), "none", why_none=(
                "no contrast: pass --pos/--neg files or --reference, or preference triples "
                "(prompt/chosen/rejected) so attributed pairs can be contrasted"))
        fp = _features(model, fmt, [(p.prompt, p.chosen) for p in trip], site)
        fn = _features(model, fmt, [(p.prompt, p.rejected) for p in trip], site)
        groups = [p.prompt for p in trip] * 2
        how = (f"attributed: chosen vs rejected of {len(trip)} attributed training pairs "
               "(response mean)")
    md = mean_diff(fp, fn, site=fp.site, groups=groups, n_permutations=n_permutations)
    rows = [{"method": "mean_diff", **_flat(md.scores)}]
    try:
        pca = pca_bias(fp, fn, k=1, site=fp.site, groups=groups, n_permutations=n_permutations)
        cos = float(abs(pca.basis[0].double() @ md.basis[0].double()))
        rows.append({"method": "pca_bias", **_flat(pca.scores), "cos_with_mean_diff": cos})
    except MechUnlearnError as e:  # e.g. too few samples for a PCA: say so in the table
        rows.append({"method": "pca_bias", "note": f"not fitted: {e}"})
    return ContrastResult(md, pd.DataFrame(rows), how)


def _flat(scores: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k in ("heldout_auc", "p_value", "norm", "ratio", "mean_diff"):
        if k in scores:
            arr = np.asarray(scores[k], dtype=float).reshape(-1)
            if arr.size:
                out[k] = float(arr[0])
    return out
