"""The toy-world attribution evaluation's methods that need the model, not only features:
gradient similarity (activation and parameter gradients), the contrast+DPO ensemble and EK-FAC
influence. Called by :func:`mechunlearn.studies.attribution_eval.evaluate_world` with its
``run(name, attributor, queries, site_key, layer, position)`` recorder."""

from __future__ import annotations

import time
from typing import Any

from mechunlearn.attribution.gradient import gradient_features
from mechunlearn.attribution.registry import METHODS as REGISTRY
from mechunlearn.attribution.registry import make
from mechunlearn.sites import Site


def _fmt(prompt: str, response: str) -> tuple[str, str]:
    from mechunlearn.toyworld import format_prompt, format_response

    return format_prompt(prompt), format_response(response)


def gradient_methods(world: Any, cfg: Any, layers: list[int], train: list[Any], ids: list[str],
                     q_prompts: list[Any], q_resp: list[str], good: list[str] | None,
                     run: Any, say: Any, c_train: dict | None = None,
                     c_query: dict | None = None) -> None:
    """Run ``cfg.methods`` whose inputs are ``gradients``, ``param_gradients``,
    ``contrast+gradients`` or ``model`` (``good``: the SFT model's answers, needed by
    ``contrast+dpo``; ``c_train``/``c_query``: contrast features per Site)."""
    model = world.model
    by = lambda kind: [m for m in cfg.methods if REGISTRY[m].inputs == kind]  # noqa: E731
    dpo_items = [(*_fmt(p.prompt, p.chosen), _fmt(p.prompt, p.rejected)[1]) for p in train]
    nll_items = [_fmt(p.prompt, p.chosen) for p in train]
    items, ref = (dpo_items, world.sft_model) if cfg.grad_loss == "dpo" else (nll_items, None)
    q_items = [_fmt(p.prompt, r) for p, r in zip(q_prompts, q_resp)]
    beta = world.config.beta
    t0 = time.perf_counter()
    gsites = [Site(f"blocks.{i}.hook_resid_post", "response_mean") for i in layers]
    if by("gradients"):
        g_train = gradient_features(model, items, gsites, loss=cfg.grad_loss, ref_model=ref,
                                    beta=beta, ids=ids, batch_size=32)
        g_query = gradient_features(model, q_items, gsites, loss="nll", batch_size=32)
        for s in gsites:
            for name in by("gradients"):
                run(name, make(name, g_train[s], **cfg.options(name)), g_query[s],
                    s.key, int(s.layer), "response_mean")
        say(f"gradient methods done in {time.perf_counter() - t0:.1f}s")
    if by("contrast+gradients"):
        d_train = gradient_features(model, dpo_items, gsites, loss="dpo",
                                    ref_model=world.sft_model, beta=beta, ids=ids, batch_size=32)
        d_query = gradient_features(
            model, [(*_fmt(p.prompt, b), _fmt(p.prompt, g)[1])
                    for p, b, g in zip(q_prompts, q_resp, good)], gsites, loss="dpo",
            ref_model=world.sft_model, beta=beta, batch_size=32)
        for s in [s for s in gsites if s in c_train]:  # Sites of both views
            for name in by("contrast+gradients"):
                run(name, make(name, (c_train[s], d_train[s]), k=cfg.k),
                    (c_query[s], d_query[s]), s.key, int(s.layer), "response_mean")
        say(f"contrast+dpo done in {time.perf_counter() - t0:.1f}s")
    if by("param_gradients"):
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        kw = {"params": names, "projection_dim": cfg.projection_dim, "seed": cfg.seed}
        p_train = gradient_features(model, items, loss=cfg.grad_loss, ref_model=ref,
                                    beta=beta, ids=ids, **kw)
        p_query = gradient_features(model, q_items, loss="nll", **kw)
        for name in by("param_gradients"):
            run(name, make(name, p_train, k=cfg.k), p_query, "params", -1, "params")
        say(f"parameter-gradient methods done in {time.perf_counter() - t0:.1f}s")
    for name in by("model"):
        dpo = name.endswith("_dpo")
        att = make(name, dpo_items if dpo else nll_items, k=cfg.k, model=model, ids=ids,
                   **({"ref_model": world.sft_model, "beta": beta} if dpo else {}))
        run(name, att, q_items, "params", -1, "params")
        say(f"{name} done in {time.perf_counter() - t0:.1f}s")
