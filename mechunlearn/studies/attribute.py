"""Attribution of the bad cases over a layer sweep, several methods side by side.

At each layer's ``hook_resid_post`` (response mean), every training pair (prompt + chosen
response, in the study's prompt format) and every bad case are features; each method
attributes each bad case and the per-query scores are averaged over all bad cases (one
ranking of the training set per Site and method). The Site is chosen **without ground
truth**: the one with the lowest mean relative residual of the convex decomposition (how
well a few training samples explain the bad cases). Methods come from
:data:`mechunlearn.attribution.METHODS`: ``convex`` (convex decomposition), ``repsim``
(cosine), ``repsim_whitened`` (cosine after whitening by the training covariance); with
gradients, ``convex_grad`` / ``gradsim`` (the same on per-sample NLL gradients at the Site's
activation); with a reference model and preference triples (every training pair has a
``rejected`` response), the preference-contrast methods ``contrast`` (chosen - rejected vs
bad - the reference model's greedy answer) and, with gradients, ``contrast+dpo``
(docs/attribution.md), beside the centred baselines ``repsim_centered`` and
``gradsim_centered``. With ground-truth ids, AUC and
precision@k of each ranking are reported too.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from mechunlearn.errors import ConfigError
from mechunlearn.features import Features, extract
from mechunlearn.sites import Site
from mechunlearn.studies.cases import BadCases
from mechunlearn.studies.data import TrainPair
from mechunlearn.studies.format import PromptFormat
from mechunlearn.tokens import model_tokenizer

CRITERION = "lowest mean convex residual over the bad cases (no ground truth used)"


@dataclass(frozen=True)
class AttributionResult:
    """The sweep (one row per Site x method), the chosen Site, and at that Site: mean score
    ``[N]`` per method, mean convex weight ``[N]`` (sums to 1), and the training features."""

    sweep: pd.DataFrame
    site: Site
    scores: dict[str, Tensor] = field(repr=False)
    weights: Tensor = field(repr=False)
    train_features: Features = field(repr=False)
    criterion: str = CRITERION

    def top(self, k: int) -> list[int]:
        """Training rows with the largest mean convex weight (positive weight only), best first."""
        order = torch.argsort(self.weights, descending=True, stable=True)[:k]
        return [int(i) for i in order if self.weights[i] > 0]


FEATURE_METHODS = ("convex", "repsim", "repsim_whitened")
GRADIENT_METHODS = ("convex_grad", "gradsim")


def _contrast_inputs(model: Any, fmt: PromptFormat, train: Sequence[TrainPair], cases: BadCases,
                     sites: list[Site], ft: dict[Site, Features], fq: dict[Site, Features],
                     reference: Any, grads: tuple[Any, Any] | None, ids: list[str],
                     batch_size: int) -> dict[str, tuple[Any, Any]]:
    """``{method: (train inputs per Site, query inputs per Site)}`` of the contrast family and
    the centred baselines it is compared with (``grads``: the NLL-gradient features)."""
    from mechunlearn.attribution import ContrastFeatures, gradient_features, reference_answers

    tok = model_tokenizer(model)
    good = reference_answers(reference, [fmt.prompt(p) for p in cases.prompts])
    fr = extract(model, fmt.encode_pairs(tok, [p.prompt for p in train],
                                         [p.rejected for p in train]), sites,
                 batch_size=batch_size, ids=ids)
    fg = extract(model, fmt.encode_pairs(tok, cases.prompts, good), sites, batch_size=batch_size)
    ct = {s: ContrastFeatures.from_pair(ft[s], fr[s]) for s in sites}
    cq = {s: ContrastFeatures.from_pair(fq[s], fg[s]) for s in sites}
    out = {"contrast": (ct, cq), "repsim_centered": (ft, fq)}
    if grads is not None:
        gt, gq = grads
        tr = [(fmt.prompt(p.prompt), fmt.response(p.chosen), fmt.response(p.rejected))
              for p in train]
        q = [(fmt.prompt(p), fmt.response(b), fmt.response(g))
             for p, b, g in zip(cases.prompts, cases.responses, good)]
        dt = gradient_features(model, tr, sites, loss="dpo", ref_model=reference, ids=ids,
                               batch_size=batch_size)
        dq = gradient_features(model, q, sites, loss="dpo", ref_model=reference,
                               batch_size=batch_size)
        out["contrast+dpo"] = ({s: (ct[s], dt[s]) for s in sites},
                               {s: (cq[s], dq[s]) for s in sites})
        out["gradsim_centered"] = (gt, gq)
    return out


def _train_features(model: Any, tb: Any, sites: list[Site], ids: list[str],
                    cache: Path | None, batch_size: int) -> dict[Site, Features]:
    """One forward pass for all Sites, or per-Site resumable FeatureStores under ``cache``."""
    if cache is None:
        return extract(model, tb, sites, batch_size=batch_size, ids=ids)
    from mechunlearn.storage import extract_to_store

    out = {}
    for s in sites:
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"train-{s.key}")
        out[s] = extract_to_store(model, tb, s, cache / name, batch_size=batch_size,
                                  ids=ids).load()
    return out


def attribute_sweep(model: Any, fmt: PromptFormat, train: Sequence[TrainPair], cases: BadCases,
                    layers: Sequence[int] | None = None, k: int = 8, gradients: bool = True,
                    truth: Sequence[str] | None = None, batch_size: int = 32,
                    cache: str | os.PathLike[str] | None = None,
                    say: Callable[[str], None] = lambda s: None,
                    reference: Any = None) -> AttributionResult:
    """Attribute every bad case at each layer (see the module docstring).

    Args:
        train: ``N`` training pairs (features of prompt + ``chosen``).
        cases: the bad cases (``m`` queries).
        layers: block indices (default all); k: convex budget / top-k per query.
        truth: ground-truth training ids (validated by the caller) for AUC / precision@k.
        cache: folder for resumable per-Site training-feature stores (``--resume``).
        reference: the reference (pre-preference-tuning) model; with it and a ``rejected``
            response on every training pair, the contrast methods join the sweep.

    Returns:
        :class:`AttributionResult`; ``sweep`` columns ``site, layer, method, residual, auc,
        precision_at_k, seconds`` (``residual``: mean over queries, NaN for similarity methods).
    """
    n_layers = int(model.cfg.n_layers)
    layer_list = list(range(n_layers)) if layers is None else list(layers)
    bad = [i for i in layer_list if not (isinstance(i, int) and 0 <= i < n_layers)]
    if not layer_list or bad:
        raise ConfigError(f"layers must be block indices in 0..{n_layers - 1}, got {layer_list}.")
    sites = [Site(f"blocks.{i}.hook_resid_post", "response_mean") for i in layer_list]
    ids = [p.id for p in train]
    if k > len(train):
        raise ConfigError(f"k={k} is larger than the training set ({len(train)} samples).")
    tok = model_tokenizer(model)
    t0 = time.perf_counter()
    tb = fmt.encode_pairs(tok, [p.prompt for p in train], [p.chosen for p in train])
    ft = _train_features(model, tb, sites, ids, None if cache is None else Path(cache),
                         batch_size)
    fq = extract(model, fmt.encode_pairs(tok, cases.prompts, cases.responses), sites,
                 batch_size=batch_size)
    say(f"      features of {len(train)} training pairs and {len(cases.prompts)} bad cases at "
        f"{len(sites)} layer(s) in {time.perf_counter() - t0:.1f} s")
    feats: dict[str, tuple[Any, Any]] = {m: (ft, fq) for m in FEATURE_METHODS}
    if gradients:
        from mechunlearn.attribution import gradient_features

        t0 = time.perf_counter()
        gt = gradient_features(model, fmt.pairs([p.prompt for p in train],
                                                [p.chosen for p in train]),
                               sites, loss="nll", ids=ids, batch_size=batch_size)
        gq = gradient_features(model, fmt.pairs(cases.prompts, cases.responses), sites,
                               loss="nll", batch_size=batch_size)
        feats.update({m: (gt, gq) for m in GRADIENT_METHODS})
        say(f"      NLL-gradient features in {time.perf_counter() - t0:.1f} s")
    if reference is not None and all(p.rejected is not None for p in train):
        t0 = time.perf_counter()
        feats.update(_contrast_inputs(model, fmt, train, cases, sites, ft, fq, reference,
                                      feats["gradsim"] if gradients else None, ids, batch_size))
        say(f"      preference-contrast inputs in {time.perf_counter() - t0:.1f} s")
    from mechunlearn.attribution import make
    pos = torch.as_tensor(np.isin(np.array(ids), np.array(list(truth or []), dtype=object)))
    rows, scores, weights = [], {}, {}
    for s in sites:
        for name, (tr, q) in feats.items():
            t1 = time.perf_counter()
            atts = make(name, tr[s], k=k).attribute_many(q[s])
            mean = torch.stack([a.scores.double() for a in atts]).mean(0)
            scores[(s, name)] = mean
            if name == "convex":
                w = torch.zeros(len(train), dtype=torch.float64)
                for a in atts:
                    w[list(a.indices)] += a.weights.double()
                weights[s] = w / len(atts)
            rows.append({"site": s.key, "layer": s.layer, "method": name,
                         "residual": float(np.mean([a.residual for a in atts])),
                         **_quality(mean, pos, k), "seconds": time.perf_counter() - t1})
    sweep = pd.DataFrame(rows)
    conv = sweep[sweep.method == "convex"].reset_index(drop=True)
    best = sites[int(np.nanargmin(conv.residual.to_numpy()))]
    say(f"      chosen Site {best.key} ({CRITERION})")
    return AttributionResult(sweep, best, {m: scores[(best, m)] for m in feats}, weights[best],
                             ft[best])


def _quality(scores: Tensor, pos: Tensor, k: int) -> dict[str, float]:
    """AUC and precision@k of ``scores [N]`` for ground truth ``pos [N]`` (NaN without it)."""
    if not 0 < int(pos.sum()) < len(pos):
        return {"auc": float("nan"), "precision_at_k": float("nan")}
    from mechunlearn.ranking import auc

    top = torch.argsort(-scores, stable=True)[:k]
    return {"auc": auc(scores, pos), "precision_at_k": float(pos[top].float().mean())}
