"""Attribution of the bad cases over a layer sweep, several methods side by side.

At each layer's ``hook_resid_post`` (response mean), every training pair (prompt + chosen
response, in the study's prompt format) and every bad case are features; each method
attributes each bad case and the per-query scores are averaged over all bad cases (one
ranking of the training set per Site and method). The Site is chosen **without ground
truth**: the one with the lowest mean relative residual of the convex decomposition (how
well a few training samples explain the bad cases). Methods: ``convex`` (convex
decomposition), ``repsim`` (cosine), ``repsim_whitened`` (cosine after whitening by the
training covariance) and, with gradients, ``convex_grad`` / ``gradsim`` (the same on
per-sample NLL gradients at the Site's activation). With ground-truth ids, AUC and
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


def _makers(k: int) -> dict[str, Callable[[Any], Any]]:
    from mechunlearn.attribution import ConvexAttributor, ConvexConfig, GradSim, RepSim

    return {"convex": lambda f: ConvexAttributor(f, k=k),
            "repsim": lambda f: RepSim(f, k=k),
            "repsim_whitened": lambda f: RepSim(f, k=k, whiten=1e-2),
            "convex_grad": lambda f: ConvexAttributor(
                f, ConvexConfig(k=k, center=False, normalize="l2", pool_metric="cosine")),
            "gradsim": lambda f: GradSim(f, k=k)}


def _train_features(model: Any, tb: Any, sites: list[Site], ids: list[str],
                    cache: Path | None, batch_size: int) -> dict[Site, Features]:
    """One forward pass for all Sites, or per-Site resumable FeatureStores under ``cache``."""
    if cache is None:
        return extract(model, tb, sites, batch_size=batch_size, ids=ids)
    from mechunlearn.store import extract_to_store

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
                    say: Callable[[str], None] = lambda s: None) -> AttributionResult:
    """Attribute every bad case at each layer (see the module docstring).

    Args:
        train: ``N`` training pairs (features of prompt + ``chosen``).
        cases: the bad cases (``m`` queries).
        layers: block indices (default all); k: convex budget / top-k per query.
        truth: ground-truth training ids (validated by the caller) for AUC / precision@k.
        cache: folder for resumable per-Site training-feature stores (``--resume``).

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
    feats = {m: (ft, fq) for m in ("convex", "repsim", "repsim_whitened")}
    if gradients:
        from mechunlearn.attribution import gradient_features

        t0 = time.perf_counter()
        gt = gradient_features(model, fmt.pairs([p.prompt for p in train],
                                                [p.chosen for p in train]),
                               sites, loss="nll", ids=ids, batch_size=batch_size)
        gq = gradient_features(model, fmt.pairs(cases.prompts, cases.responses), sites,
                               loss="nll", batch_size=batch_size)
        feats.update({"convex_grad": (gt, gq), "gradsim": (gt, gq)})
        say(f"      NLL-gradient features in {time.perf_counter() - t0:.1f} s")
    makers = _makers(k)
    pos = torch.as_tensor(np.isin(np.array(ids), np.array(list(truth or []), dtype=object)))
    rows, scores, weights = [], {}, {}
    for s in sites:
        for name, (tr, q) in feats.items():
            t1 = time.perf_counter()
            atts = makers[name](tr[s]).attribute_many(q[s])
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
