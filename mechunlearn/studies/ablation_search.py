"""Pareto search of abliteration parameters on the toy world's reinforced bias.

The target behaviour is the bias DPO reinforced: refusing borderline requests. Directions come
from the decision-token contrast that changes behaviour (docs/directions.md, "Contrast of
models"): X+ = the tuned model's ``blocks.l.hook_resid_post`` at the last prompt token of the
borderline *training* prompts, X− = the SFT model's on the same prompts (paired), one basis
per layer. Each trial ablates them from the tuned model's writers with
:func:`mechunlearn.ablation.ablate_` and measures, on *held-out* eval prompts:

* ``target_rate``: refusal rate of greedy answers to borderline prompts (``is_refusal``);
* ``kl``: KL(unedited ‖ edited) of the first answer token on ordinary prompts (nats; the
  objective of the Heretic tool, github.com/p-e-w/heretic);
* beside them (not optimised): ``borderline_good`` and ``ordinary_good`` answer rates.

:func:`pca_ranking` measures where the PCA bias/variance ranking puts the class-separating
component for prompt-mean vs last-token features, literal vs scale-free ratio.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from mechunlearn.ablation import LayerKernel, ablate_, layer_directions, pareto_search
from mechunlearn.features import extract
from mechunlearn.lm import logits
from mechunlearn.sites import Site

DEFAULT_METHODS = ("mean", "median", "pca", "pca_bias")


def decision_features(world: Any, position: str = "last") -> tuple[list[torch.Tensor],
                                                                   list[torch.Tensor]]:
    """Tuned (X+) and SFT (X−) features ``[n, d]`` per layer on the borderline training
    prompts, pooled at ``position`` (``"last"`` prompt token or ``"mean"`` over the prompt)."""
    from mechunlearn.studies.pipeline import bias_examples
    from mechunlearn.toyworld import encode_prompts

    prompts = [p for p, _ in bias_examples(world)[0]]
    tb = encode_prompts(world.tokenizer, prompts)
    sites = [Site(f"blocks.{i}.hook_resid_post", position)
             for i in range(int(world.model.cfg.n_layers))]
    fp, fn = extract(world.model, tb, sites), extract(world.sft_model, tb, sites)
    return [fp[s].values for s in sites], [fn[s].values for s in sites]


def _first_token_logprobs(model: Any, tb: Any) -> torch.Tensor:
    lg = logits(model, tb.input_ids, tb.attention_mask)
    last = tb.attention_mask.sum(1) - 1
    return torch.log_softmax(lg[torch.arange(len(last)), last], -1)


def toy_objective(world: Any, methods: Sequence[str] = DEFAULT_METHODS,
                  max_new_tokens: int = 24) -> tuple[Callable[[dict[str, Any]], dict[str, float]],
                                                     dict[str, float], dict[str, Any]]:
    """``(evaluate, baseline, space)`` for :func:`~mechunlearn.ablation.pareto_search`.

    ``evaluate(params)`` edits ``world.model`` in place, measures, and undoes the edit
    (bit for bit) before returning.
    """
    from mechunlearn.toyworld import encode_prompts, generate_text, is_good, is_refusal

    model = world.model
    n = int(model.cfg.n_layers)
    pos, neg = decision_features(world)
    dirs = {m: layer_directions(pos, neg, m) for m in methods}
    border, ordinary = list(world.eval["borderline"]), list(world.eval["ordinary"])
    tb = encode_prompts(world.tokenizer, [p.prompt for p in ordinary])
    ref = _first_token_logprobs(model, tb)

    @torch.no_grad()
    def measure() -> dict[str, float]:
        rb = generate_text(model, border, max_new_tokens=max_new_tokens)
        ro = generate_text(model, ordinary, max_new_tokens=max_new_tokens)
        lp = _first_token_logprobs(model, tb)
        return {"target_rate": float(np.mean([is_refusal(r) for r in rb])),
                "kl": float((ref.exp() * (ref - lp)).sum(-1).mean()),
                "borderline_good": float(np.mean([is_good(r, p) for r, p in zip(rb, border)])),
                "ordinary_good": float(np.mean([is_good(r, p) for r, p in zip(ro, ordinary)]))}

    def kernel(p: dict[str, Any], part: str) -> LayerKernel:
        mx = float(p[f"{part}_max"])
        return LayerKernel(mx, float(p[f"{part}_peak"]), float(p[f"{part}_width"]),
                           float(p[f"{part}_min_frac"]) * mx)

    def evaluate(p: dict[str, Any]) -> dict[str, float]:
        idx = None if p["per_layer"] else float(p["direction_index"])
        with ablate_(model, layer_directions=dirs[p["method"]], direction_index=idx,
                     attn=kernel(p, "attn"), mlp=kernel(p, "mlp"),
                     norm_preserving=bool(p["norm_preserving"])):
            return measure()

    space: dict[str, Any] = {
        "method": list(methods), "per_layer": [False, True],
        "direction_index": (0.0, float(n - 1)), "norm_preserving": [False, True],
    }
    for part in ("attn", "mlp"):
        space.update({f"{part}_max": (0.0, 1.5), f"{part}_peak": (0.0, float(n - 1)),
                      f"{part}_width": (0.5, float(n)), f"{part}_min_frac": (0.0, 1.0)})
    return evaluate, measure(), space


def search_toyworld(world: Any, n_trials: int = 60, seed: int = 0,
                    methods: Sequence[str] = DEFAULT_METHODS, max_new_tokens: int = 24,
                    progress: Callable[[int, dict[str, Any]], None] | None = None
                    ) -> pd.DataFrame:
    """Pareto search (refusal rate on borderline prompts, KL on ordinary prompts) over
    direction choice, fractional direction index, per-writer kernels and norm preservation.
    Row ``trial = -1`` is the unedited model."""
    evaluate, baseline, space = toy_objective(world, methods, max_new_tokens)
    return pareto_search(evaluate, space, ("target_rate", "kl"), n_trials=n_trials, seed=seed,
                         baseline=baseline, progress=progress)


def pca_ranking(world: Any, positions: Sequence[str] = ("mean", "last")) -> pd.DataFrame:
    """Where the PCA bias/variance ranking puts the class-separating component.

    Per layer and pooling: PCA of X+ ∪ X− (tuned vs SFT on borderline prompts); the
    *separating* component is the one with the largest |cos| to the difference of means.
    Columns: ``rank_literal`` / ``rank_scale_free`` (1 = ranked first) of that component under
    |E|/Var and |E|/Std, ``cos_top_literal`` / ``cos_top_scale_free`` = |cos| of each ranking's
    top component with the difference of means, ``n_components``, and the variance of the
    literal ratio's top component relative to the largest (``var_top_literal``).
    """
    from mechunlearn.directions.pca_bias import bias_ratios, pca_components

    rows = []
    for position in positions:
        pos, neg = decision_features(world, position)
        for layer, (p, q) in enumerate(zip(pos, neg)):
            X = torch.cat([p, q]).double().numpy()
            y = np.r_[np.ones(len(p), bool), np.zeros(len(q), bool)]
            comps, var = pca_components(X, True, None, 1e-6)
            md = X[y].mean(0) - X[~y].mean(0)
            cos = np.abs(comps @ md) / np.linalg.norm(md)
            sep = int(np.argmax(cos))
            r = bias_ratios(X, y, comps, True)
            row: dict[str, Any] = {"position": position, "layer": layer,
                                   "n_components": len(comps), "cos_separating": float(cos[sep])}
            for name in ("literal", "scale_free"):
                order = np.argsort(-r[name], kind="stable")
                row[f"rank_{name}"] = int(np.flatnonzero(order == sep)[0]) + 1
                row[f"cos_top_{name}"] = float(cos[order[0]])
                if name == "literal":
                    row["var_top_literal"] = float(var[order[0]] / var[0])
            rows.append(row)
    return pd.DataFrame(rows)
