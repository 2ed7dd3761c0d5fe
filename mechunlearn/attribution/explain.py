"""One call: which preference pairs taught these bad responses? (contrast attribution)

:func:`explain_preferences` wires :func:`~mechunlearn.attribution.contrast.contrast_features`,
:func:`~mechunlearn.attribution.contrast.reference_answers` and
:class:`~mechunlearn.attribution.contrast.ContrastAttributor` together for a user's own model
and data: preference triples in, a ranking of the training pairs out (for the whole set of
bad responses and for each one). Method and measured accuracy: docs/attribution.md
("Preference-contrast attribution"); source: the contrast is the feature-space analogue of the
DPO margin (Rafailov et al., arXiv:2305.18290).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

import torch
from torch import Tensor

from mechunlearn.attribution.base import Attribution, SetAttribution, combine_set
from mechunlearn.attribution.contrast import (
    ContrastAttributor,
    Scorer,
    contrast_features,
    reference_answers,
)
from mechunlearn.attribution.gradient import GradSim, gradient_features
from mechunlearn.attribution.pooling import choose_pooling, pool_scores
from mechunlearn.attribution.similarity import ranked_attribution
from mechunlearn.errors import ConfigError, EmptyDataError, ShapeError
from mechunlearn.sites import Site

Space = Literal["parameters", "both", "activations", "gradients"]


def _triples(train: Sequence[Any]) -> list[tuple[str, str, str]]:
    out = []
    for i, t in enumerate(train):
        if not (isinstance(t, (tuple, list)) and len(t) == 3 and all(isinstance(s, str) for s in t)):
            raise ConfigError(f"Training item {i} is {t!r}; explain_preferences() needs "
                              "(prompt, chosen, rejected) triples of str.")
        out.append((t[0], t[1], t[2]))
    return out


def _pairs(bad: Sequence[Any]) -> list[tuple[str, str]]:
    out = []
    for i, t in enumerate(bad):
        if not (isinstance(t, (tuple, list)) and len(t) == 2 and all(isinstance(s, str) for s in t)):
            raise ConfigError(f"Bad item {i} is {t!r}; explain_preferences() needs "
                              "(prompt, bad_response) pairs of str.")
        out.append((t[0], t[1]))
    return out


def explain_preferences(
    model: Any,
    site: Site | None,
    train: Sequence[tuple[str, str, str]],
    bad: Sequence[tuple[str, str]],
    good: Sequence[str] | None = None,
    ref_model: Any = None,
    k: int = 32,
    space: Space = "parameters",
    scorer: Scorer = "cosine",
    whiten: float | None = None,
    beta: float = 0.1,
    ids: Sequence[str] | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 32,
    pool: int | Literal["auto"] | None = None,
    projection_dim: int = 4096,
    params: Sequence[str] | None = None,
) -> SetAttribution:
    """Attribute bad responses to the preference pairs that taught them.

    Views of "what a pair taught":

    * ``"parameters"``: the gradient of each pair's DPO loss w.r.t. the model's parameters
      (all trainable ones, or ``params``), compressed by a seeded count sketch to
      ``projection_dim`` dims, against the same gradient of the query triple
      ``(q, bad, good)`` by centred cosine (TracIn-style, one checkpoint: Pruthi et al.,
      "Estimating Training Data Influence by Tracing Gradient Descent", arXiv:2002.08484;
      cosine rather than dot product as in renormalised influence, Hammoudeh & Lowd,
      "Identifying a Training-Set Attack's Target Using Renormalized Influence Estimation",
      arXiv:2201.10055: large-gradient pairs otherwise outrank the cause; the sketch as in
      TRAK, Park et al., arXiv:2303.14186, without its inverse-Gram term, which collapsed
      here).
      No Site: ``site`` is ignored and may be ``None``. One backward pass per pair.
    * ``"activations"``: contrast features ``phi(x, chosen) - phi(x, rejected)`` against
      ``phi(q, bad) - phi(q, good)`` (:class:`ContrastAttributor`);
    * ``"gradients"``: the gradient of each pair's DPO loss w.r.t. the Site's activation
      (:func:`gradient_features` with ``loss="dpo"``) against the gradient of the DPO loss of
      the triple ``(q, bad, good)`` -- "bad preferred over good" -- (:class:`GradSim`,
      centred);
    * ``"both"``: the mean of the ``"activations"`` and ``"gradients"`` per-query scores
      after z-scoring each over the training set (equal weights, no tuning).

    ``"parameters"`` is the default: on three hard toy worlds it reached per-query AUC
    0.97-1.00 where ``"both"`` reached 0.95-0.97; on the easy world, where the poisoned pairs
    are fully learned and their final-checkpoint gradients vanish, it is below ``"both"``
    (AUC 0.98 vs 1.00; docs/attribution.md).

    Args:
        model: the tuned TransformerBridge (the model that gives the bad responses).
        site: where features are read, e.g. ``resid(L, position="response_mean")``
            (``"gradients"``/``"both"`` need a response-mean, mean or int position).
        train: ``N`` ``(prompt, chosen, rejected)`` triples, formatted as the model saw them.
        bad: ``m`` ``(prompt, bad_response)`` pairs.
        good: ``m`` good alternative responses, one per bad pair (same format as the bad
            responses). ``None``: the reference model's greedy answers
            (:func:`reference_answers`), which needs ``ref_model``.
        ref_model: the pre-preference-tuning model (e.g. the SFT model DPO started from);
            required for every space but ``"activations"`` (the DPO loss is relative to it).
        k: selected-set size; scorer/whiten: see :class:`ContrastAttributor` (activations).
        beta: DPO temperature of the gradients' loss (cosines barely depend on it).
        ids: training ids (default ``"0".."N-1"``).
        max_new_tokens: decoding budget of the reference answers.
        pool: ``None`` (default: each bad response on its own), an int ``k`` (each bad
            response's scores averaged with its ``k`` most similar other bad responses', after
            z-scoring: :func:`~mechunlearn.attribution.pooling.pool_scores`) or ``"auto"`` (``k``
            chosen by the leave-one-out criterion of
            :func:`~mechunlearn.attribution.pooling.choose_pooling`, reported in every
            per-query result's ``info["pool_k"]``). Needs at least 2 bad responses.
        projection_dim: count-sketch size of the parameter gradients (``"parameters"``).
        params: parameter names for ``"parameters"`` (default: every trainable parameter).

    Returns:
        :class:`SetAttribution`: ``combined`` ranks all ``N`` pairs for the whole set of bad
        responses (mean per-query score; ``combined.ids`` are the top ``k``), ``per_query``
        has one :class:`Attribution` per bad response (``method`` ``"contrast_cosine"``,
        ``"dpo_gradient"`` or ``"contrast+dpo"``).

    Raises:
        ConfigError: malformed items, unknown ``space``, neither ``good`` nor ``ref_model``
            given, no ``ref_model`` for gradients, no ``site`` for a Site-based view, or
            ``pool`` that is not ``None``, ``"auto"`` or an int in ``[0, m - 1]``.
        ShapeError: ``len(good) != len(bad)`` or ``len(ids) != len(train)``.
        EmptyDataError: no training pairs, no bad responses, or every training pair has
            ``chosen == rejected``.

    Pairs whose ``chosen`` equals their ``rejected`` carry no preference (their contrast is
    zero and their DPO gradient vanishes), so they are left out of the ranking with one
    ``UserWarning`` naming their ids: their ``scores`` are ``nan`` (they rank last and are
    never selected) and ``indices`` / ``ids`` still refer to the full ``train`` list.
    """
    if space not in ("parameters", "both", "activations", "gradients"):
        raise ConfigError("space must be 'parameters', 'both', 'activations' or 'gradients', "
                          f"got {space!r}.")
    if space != "parameters" and not isinstance(site, Site):
        raise ConfigError(f"space={space!r} reads features at a Site; pass site=Site(...) "
                          "(e.g. resid(1, position='response_mean')) or use space='parameters'.")
    tr, bd = _triples(train), _pairs(bad)
    if not tr or not bd:
        raise EmptyDataError(f"explain_preferences() got {len(tr)} training pairs and "
                             f"{len(bd)} bad responses; both must be non-empty.")
    if ids is not None and (isinstance(ids, str) or len(ids) != len(tr)):
        raise ShapeError(f"ids must hold one id per training pair ({len(tr)}), got "
                         f"{1 if isinstance(ids, str) else len(ids)}.")
    all_ids = [str(i) for i in ids] if ids is not None else [str(i) for i in range(len(tr))]
    keep = [i for i, (_, c, r) in enumerate(tr) if c != r]
    if len(keep) < len(tr):
        tie = [all_ids[i] for i in range(len(tr)) if tr[i][1] == tr[i][2]]
        if not keep:
            raise EmptyDataError(f"explain_preferences(): all {len(tr)} training pairs have "
                                 "chosen == rejected, so none carries a preference to "
                                 "attribute; pass (prompt, chosen, rejected) triples whose "
                                 "responses differ.")
        shown = tie[:20] + (["..."] if len(tie) > 20 else [])
        warnings.warn(f"explain_preferences(): {len(tie)} of {len(tr)} training pairs have "
                      f"chosen == rejected (no preference), ids {shown}; they are left out of "
                      "the ranking (score nan, never selected).", UserWarning, stacklevel=2)
        tr, ids = [tr[i] for i in keep], [all_ids[i] for i in keep]
    if space != "activations" and ref_model is None:
        raise ConfigError(f"space={space!r} needs ref_model= (the DPO loss of the gradients is "
                          "relative to the reference model); or use space='activations'.")
    prompts = [p for p, _ in bd]
    if good is None:
        if ref_model is None:
            raise ConfigError("explain_preferences() needs good= (one good answer per bad "
                              "response) or ref_model= (its greedy answers are used).")
        good = reference_answers(ref_model, prompts, max_new_tokens=max_new_tokens)
    if isinstance(good, str) or len(good) != len(bd):
        raise ShapeError(f"good must hold one response per bad pair ({len(bd)}), got "
                         f"{1 if isinstance(good, str) else len(good)}.")
    if pool is not None and pool != "auto" and (isinstance(pool, bool) or not isinstance(pool, int)
                                               or not 0 <= pool <= len(bd) - 1):
        raise ConfigError(f"pool must be None, 'auto' or an int in [0, {len(bd) - 1}] (other bad "
                          f"responses), got {pool!r}.")
    if pool is not None and len(bd) < 2:
        raise ConfigError("pool= needs at least 2 bad responses (it averages over neighbours).")
    res = _explain(model, site, tr, bd, good, ref_model, k, space, scorer, whiten, beta, ids,
                   batch_size, pool, projection_dim, params)
    return res if len(keep) == len(all_ids) else _expand_set(res, keep, len(all_ids))


def _explain(model: Any, site: Site | None, tr: list[tuple[str, str, str]],
             bd: list[tuple[str, str]], good: Sequence[str], ref_model: Any, k: int,
             space: Space, scorer: Scorer, whiten: float | None, beta: float,
             ids: Sequence[str] | None, batch_size: int, pool: int | str | None,
             projection_dim: int, params: Sequence[str] | None) -> SetAttribution:
    """The attribution of :func:`explain_preferences` on checked inputs."""
    prompts = [p for p, _ in bd]
    qtrip = [(p, b, g) for (p, b), g in zip(bd, good)]
    if space == "parameters":
        names = list(params) if params is not None else [
            n for n, p_ in model.named_parameters() if p_.requires_grad]
        kw = dict(loss="dpo", ref_model=ref_model, beta=beta, params=names,
                  projection_dim=projection_dim)
        gs = GradSim(gradient_features(model, tr, ids=ids, **kw), k=k, center=True)
        gs.method = "dpo_param_gradient"
        per = gs.attribute_many(gradient_features(model, qtrip, **kw))
        return _pooled(per, pool, k, gs.ids, None)
    views: list[list[Attribution]] = []
    if space != "gradients":
        c_train = contrast_features(model, [(p, c) for p, c, _ in tr],
                                    [(p, r) for p, _, r in tr], site, ids=ids,
                                    batch_size=batch_size)
        c_query = contrast_features(model, bd, list(zip(prompts, good)), site,
                                    batch_size=batch_size)
        att = ContrastAttributor(c_train, k=k, scorer=scorer, whiten=whiten)
        if space == "activations":
            return _pooled(att.attribute_many(c_query), pool, k, att.ids, site)
        views.append(att.attribute_many(c_query))
    g_train = gradient_features(model, tr, site, loss="dpo", ref_model=ref_model, beta=beta,
                                ids=ids, batch_size=batch_size)
    g_query = gradient_features(model, qtrip, site, loss="dpo", ref_model=ref_model, beta=beta,
                                batch_size=batch_size)
    gs = GradSim(g_train, k=k, center=True)
    gs.method = "dpo_gradient"
    if space == "gradients":
        return _pooled(gs.attribute_many(g_query), pool, k, gs.ids, site)
    views.append(gs.attribute_many(g_query))
    return _pooled([_mean_z(a, b, k, gs.ids, site) for a, b in zip(*views)], pool, k, gs.ids,
                   site)


def _expand(a: Attribution, keep: list[int], n: int) -> Attribution:
    """``a`` computed on the rows ``keep`` of ``n`` training pairs, in the full list's terms:
    scores ``[n]`` with ``nan`` for the rows left out, indices into the full list."""
    scores = torch.full((n,), float("nan"), dtype=torch.float64)
    scores[keep] = a.scores.double()
    return replace(a, indices=tuple(keep[i] for i in a.indices), scores=scores,
                   info={**a.info, "n_excluded": n - len(keep)})


def _expand_set(res: SetAttribution, keep: list[int], n: int) -> SetAttribution:
    return SetAttribution(_expand(res.combined, keep, n),
                          tuple(_expand(a, keep, n) for a in res.per_query))


def _pooled(per: list[Attribution], pool: int | str | None, k: int, ids: tuple[str, ...],
            site: Site | None) -> SetAttribution:
    """Per-query results (optionally pooled with neighbouring queries) and their set."""
    t0 = time.perf_counter()
    if pool is None:
        return combine_set(per, k, ids, t0)
    S = torch.stack([a.scores for a in per])
    if pool == "auto":
        choice = choose_pooling(S)
        pooled, kk = choice.scores, choice.k
    else:
        pooled, kk = pool_scores(S, int(pool)), int(pool)
    out = [replace(ranked_attribution(pooled[i], k, ids, f"{a.method}+pool", site, t0,
                                      {**a.info, "pool_k": kk}), seconds=a.seconds)
           for i, a in enumerate(per)]
    return combine_set(out, k, ids, t0)


def _z(s: Tensor) -> Tensor:
    s = s.double()
    return (s - s.mean()) / s.std().clamp_min(1e-30)


def _mean_z(a: Attribution, b: Attribution, k: int, ids: tuple[str, ...], site: Site
            ) -> Attribution:
    out = ranked_attribution((_z(a.scores) + _z(b.scores)) / 2, k, ids, "contrast+dpo", site,
                             time.perf_counter(), {})
    return replace(out, seconds=a.seconds + b.seconds)
