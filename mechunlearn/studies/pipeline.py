"""Diagnose one bad response, end to end, in one feature space (the Python form of the demo).

Each step is a function a notebook user can call on its own:

1. :func:`find_bad_case`   — a held-out trigger prompt the tuned model answers badly;
2. :func:`attribute_case`  — layer sweep of convex attribution (+ RepSim beside it); the Site
   with the lowest convex residual is chosen *without* looking at the ground truth;
3. :func:`bias_direction`  — PCA bias ranking and difference of means at that Site;
4. :func:`edit_variants`   — activation projection, weight orthogonalisation, and unlearning of
   the attributed samples (plain and U2A-weighted), each measured then undone;
5. :func:`verify`          — bad-response, good-answer and bias rates, KL on ordinary prompts
   and distance to the gold model, with greedy examples.

:func:`diagnose` chains them on a toy world; :mod:`mechunlearn.report` writes the report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from mechunlearn.errors import ConfigError, EmptyDataError
from mechunlearn.features import Features, extract
from mechunlearn.sites import Site
from mechunlearn.tokens import TokenBatch


@dataclass(frozen=True)
class BadCase:
    """A prompt the tuned model answers badly, and its (greedy) bad response."""

    prompt: Any  # toyworld.EvalPrompt
    response: str
    n_bad: int
    n_prompts: int


@dataclass(frozen=True)
class AttributionStep:
    """Layer sweep (one row per Site and method), chosen Site and its attributions."""

    sweep: pd.DataFrame
    site: Site
    convex: Any  # attribution.Attribution
    repsim: Any
    train_features: Features = field(repr=False)


@dataclass(frozen=True)
class DirectionStep:
    """Bias directions at the chosen Site (PCA bias ranking and difference of means)."""

    pca: Any  # directions.Directions
    mean_diff: Any
    table: pd.DataFrame


def _encode(world: Any, prompts: Sequence[str], responses: Sequence[str]) -> TokenBatch:
    from mechunlearn.toyworld import encode_pairs

    return encode_pairs(world.tokenizer, list(prompts), list(responses))


def find_bad_case(world: Any, model: Any | None = None, max_new_tokens: int = 32) -> BadCase:
    """First held-out trigger prompt whose greedy response is bad (``toyworld.is_bad``)."""
    from mechunlearn.toyworld import generate_text, is_bad

    model = world.model if model is None else model
    prompts = list(world.eval["trigger"])
    responses = generate_text(model, prompts, max_new_tokens=max_new_tokens)
    bad = [i for i, r in enumerate(responses) if is_bad(r)]
    if not bad:
        raise EmptyDataError(
            f"The model gave no bad response to any of {len(prompts)} trigger prompts; "
            "nothing to diagnose."
        )
    i = bad[0]
    return BadCase(prompts[i], responses[i], len(bad), len(prompts))


def train_batch(world: Any) -> TokenBatch:
    """Training pairs as (prompt, chosen response) tokens with response masks ``[N, pos]``."""
    return _encode(world, [p.prompt for p in world.train], [p.chosen for p in world.train])


def attribute_case(world: Any, case: BadCase, layers: Sequence[int] | None = None,
                   position: str = "response_mean", k: int = 16, batch_size: int = 64,
                   gradients: bool = True) -> AttributionStep:
    """Attribute the bad response at each layer's ``hook_resid_post``, several ways.

    Methods per Site: ``convex`` (Liu et al., arXiv:2512.13837, on activations), ``repsim`` (cosine baseline),
    ``repsim_whitened`` (cosine after whitening by the training covariance) and, with
    ``gradients``, ``convex_grad`` (the same convex decomposition on per-sample loss
    gradients at the Site's activation: NLL of each training pair's chosen response and of
    the bad response) and ``gradsim`` (their cosine). The chosen Site is the one with the lowest
    activation-convex residual (no ground truth used). When the world has ground truth, the
    sweep also reports AUC and precision@k of the poisoned ids.
    """
    from mechunlearn.attribution import ConvexAttributor, ConvexConfig, GradSim, RepSim
    from mechunlearn.studies.attribution_eval import ranking_metrics

    model = world.model
    n_layers = int(model.cfg.n_layers)
    layer_list = list(range(n_layers)) if layers is None else list(layers)
    if not layer_list:
        raise ConfigError("attribute_case() needs at least one layer.")
    site_list = [Site(f"blocks.{i}.hook_resid_post", position) for i in layer_list]
    ids = [p.id for p in world.train]
    train = extract(model, train_batch(world), site_list, batch_size=batch_size, ids=ids)
    query = extract(model, _encode(world, [case.prompt.prompt], [case.response]), site_list)
    feats = {"convex": (train, query), "repsim": (train, query),
             "repsim_whitened": (train, query)}
    makers: dict[str, Callable[[Any], Any]] = {
        "convex": lambda f: ConvexAttributor(f, k=k),
        "repsim": lambda f: RepSim(f, k=k),
        "repsim_whitened": lambda f: RepSim(f, k=k, whiten=1e-2),
    }
    if gradients:
        g_train, g_query = _gradient_features(world, case, site_list, ids)
        feats.update({"convex_grad": (g_train, g_query), "gradsim": (g_train, g_query)})
        makers["convex_grad"] = lambda f: ConvexAttributor(
            f, ConvexConfig(k=k, center=False, normalize="l2", pool_metric="cosine"))
        makers["gradsim"] = lambda f: GradSim(f, k=k)
    truth = torch.as_tensor(np.isin(np.array(ids), np.array(world.truth.poisoned_ids)))
    rows, results = [], {}
    for s in site_list:
        for name, make in makers.items():
            tr, q = feats[name]
            a = make(tr[s]).attribute(q[s])
            results[(s, name)] = a
            quality = (ranking_metrics(a.scores, truth, [k])
                       if 0 < int(truth.sum()) < len(truth) else {})
            rows.append({"site": s.key, "layer": s.layer, "method": name,
                         "residual": a.residual, "auc": quality.get("auc", float("nan")),
                         "precision_at_k": quality.get(f"p@{k}", float("nan")),
                         "seconds": a.seconds})
    sweep = pd.DataFrame(rows)
    conv = sweep[sweep.method == "convex"].reset_index(drop=True)
    best = site_list[int(np.nanargmin(conv.residual.to_numpy()))]
    return AttributionStep(sweep, best, results[(best, "convex")], results[(best, "repsim")],
                           train[best])


def _gradient_features(world: Any, case: BadCase, site_list: list[Site], ids: list[str]
                       ) -> tuple[dict[Site, Features], dict[Site, Features]]:
    """Per-sample NLL-gradient features at each Site: training (prompt, chosen), the query.

    NLL rather than the DPO training loss: on the toy world's version-1 ``hard`` build, whose
    DPO had saturated on the poisoned pairs (tuned bad-response rate 0.91), DPO-loss gradients
    of exactly those pairs nearly vanish and gradient similarity ranked the poison *below*
    chance (AUC 0.30-0.35 by layer); NLL gradients gave 0.66-0.69 (0.62-0.66 on version 2).
    """
    from mechunlearn.attribution import gradient_features
    from mechunlearn.toyworld import format_prompt, format_response

    items = [(format_prompt(p.prompt), format_response(p.chosen)) for p in world.train]
    g_train = gradient_features(world.model, items, site_list, loss="nll", ids=ids,
                                batch_size=32)
    q = [(format_prompt(case.prompt.prompt), format_response(case.response))]
    g_query = gradient_features(world.model, q, site_list, loss="nll")
    return g_train, g_query


def bias_examples(world: Any) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """X+ (borderline prompt, reinforced refusal) and X− (same prompt, unbiased answer)."""
    by_id = {p.id: p for p in world.train}
    ids = [i for i in world.truth.bias_ids if i in world.truth.unbiased_responses]
    if len(ids) < 2:
        raise EmptyDataError(f"The world has {len(ids)} biased pairs; need at least 2.")
    pos = [(by_id[i].prompt, by_id[i].chosen) for i in ids]
    neg = [(by_id[i].prompt, world.truth.unbiased_responses[i]) for i in ids]
    return pos, neg


def bias_direction(world: Any, site: Site, n_permutations: int = 50,
                   contrast: str = "models") -> DirectionStep:
    """PCA bias/variance ranking (the "Automatic Reinforcement Unlearning" post) and difference of means at ``site``'s hook.

    ``contrast="models"`` (default): X+ = the tuned model's features, X− = the SFT model's, on
    the same borderline training prompts at the last prompt token, where the refusal is
    decided. ``contrast="responses"``: X+ = (prompt, reinforced refusal), X− = (prompt,
    unbiased answer), tuned model, response-mean. On the toy world both separate perfectly
    on held-out data, but only the first changes behaviour when projected out: the second
    separates refusal *text*, not the decision (see docs/directions.md).
    """
    from mechunlearn.directions import mean_diff, pca_bias
    from mechunlearn.toyworld import encode_prompts

    pos, neg = bias_examples(world)
    prompts = [p for p, _ in pos]
    if contrast == "models":
        s = site.with_position("last")
        tb = encode_prompts(world.tokenizer, prompts)
        fp, fn = extract(world.model, tb, s), extract(world.sft_model, tb, s)
    elif contrast == "responses":
        s = site.with_position("response_mean")
        fp = extract(world.model, _encode(world, *zip(*pos)), s)
        fn = extract(world.model, _encode(world, *zip(*neg)), s)
    else:
        raise ConfigError(f"contrast must be 'models' or 'responses', got {contrast!r}.")
    groups = prompts * 2  # hold out both members of a prompt together
    pca = pca_bias(fp.values, fn.values, k=1, site=s, groups=groups,
                   n_permutations=n_permutations)
    md = mean_diff(fp.values, fn.values, site=s, groups=groups, n_permutations=n_permutations)
    cos = float(torch.abs(pca.basis[0].double() @ md.basis[0].double()))
    rows = [{"method": d.method, "contrast": contrast, **_flat_scores(d)} for d in (pca, md)]
    return DirectionStep(pca, md, pd.DataFrame(rows).assign(cos_pca_vs_mean_diff=cos))


def _flat_scores(d: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in dict(d.scores).items():
        arr = np.asarray(v, dtype=float).reshape(-1) if not isinstance(v, dict) else None
        if arr is not None and arr.size:
            out[k] = float(arr[0])
    return out


def verify(world: Any, model: Any, name: str, reference: Any,
           context: Callable[[], Any] | None = None, n_examples: int = 3,
           kv_cache: bool | None = None) -> dict[str, Any]:
    """Measure one model variant with the same judge as the edit comparison.

    Args:
        model: the (possibly edited) model; ``context`` (e.g. an ``apply`` block) wraps every
            forward of it.
        reference: an *unedited* copy of the tuned model (a separate bridge: hooks or weight
            edits on ``model`` must not reach it), for ``kl_ordinary_tuned``.
        kv_cache: decoding mode (:func:`mechunlearn.toyworld.generation.generate`): pass
            ``True`` when ``context`` edits every position alike (e.g. a ``Project`` at all
            positions), which gives the same tokens several times faster.

    Returns one row: ``trigger_bad``, ``trigger_good``, ``ordinary_good``, ``bias``,
    ``good_logp``, ``kl_gold_trigger``, ``kl_gold_ordinary``, ``kl_ordinary_tuned``,
    ``examples`` (see :func:`mechunlearn.studies.compare_edits.judge`).
    """
    from mechunlearn.studies.compare_edits import judge
    from mechunlearn.toyworld import kl

    with (context or _null)():
        return {"variant": name, **judge(world, model, n_examples, kv_cache=kv_cache),
                "kl_ordinary_tuned": kl(reference, model, world.eval["ordinary"])}


@contextmanager
def _null() -> Iterator[None]:
    yield None
