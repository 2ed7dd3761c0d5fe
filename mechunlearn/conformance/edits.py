"""Checks on edits: interventions change what they should and nothing else, cached decoding
equals full recompute, and weight orthogonalisation twins activation projection."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from mechunlearn.conformance.registry import (
    FAIL,
    NA,
    OK,
    Context,
    Row,
    compare,
    max_diff,
    register,
)
from mechunlearn.errors import ArchitectureError


def _run(ctx: Context, names: list[str], *interventions: object) -> dict[str, Tensor]:
    from mechunlearn.interventions import apply

    with apply(ctx.model, *interventions), torch.no_grad():
        logits, cache = ctx.model.run_with_cache(ctx.ids.to(ctx.device),
                                                 attention_mask=ctx.mask.to(ctx.device),
                                                 names_filter=names)
    out = {n: cache[n].detach().cpu() for n in names}
    out["logits"] = logits.detach().float().cpu()
    return out


def _unit(ctx: Context, seed: int) -> Tensor:
    v = torch.randn(ctx.d_model, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


@register("interventions", "Project/Steer/Erase/Patch change their site and only downstream")
def check_interventions(ctx: Context) -> list[Row]:
    from mechunlearn.interventions import Erase, Patch, Project, Steer
    from mechunlearn.sites import Site

    name, rows, last = "interventions", [], ctx.n_layers - 1
    site = Site("blocks.0.hook_resid_post", "all")
    up, here, down = "blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", \
        f"blocks.{last}.hook_resid_post"
    names = [up, here, down, "blocks.1.hook_resid_pre"]
    base = {n: ctx.cache[n] for n in names} | {"logits": ctx.cache["__logits__"]}
    u = _unit(ctx, 1)

    def upstream_same(tag: str, got: dict[str, Tensor]) -> None:
        rows.append(compare(name, f"{tag}: resid_pre[0] (upstream) unchanged", got[up], base[up],
                            rtol=0.0))

    def downstream_moves(tag: str, got: dict[str, Tensor]) -> None:
        d = max_diff(got["logits"], base["logits"])
        rows.append(Row(name, f"{tag}: logits change", OK if d > 1e-4 else FAIL, d, 1e-4,
                        "an edit that changes nothing downstream is a no-op"))

    got = _run(ctx, names, Project(u[None], site=site))
    left = float((got[here] @ u).abs().max())
    rows.append(Row(name, "Project: component along u at the site", OK if left <= 1e-5 else FAIL,
                    left, 1e-5))
    rows.append(compare(name, "Project: removes only the u component",
                        got[here], base[here] - (base[here] @ u)[..., None] * u))
    upstream_same("Project", got)
    downstream_moves("Project", got)

    got = _run(ctx, names, Steer(u, alpha=3.0, site=site))
    rows.append(compare(name, "Steer: site = base + 3u", got[here], base[here] + 3.0 * u))
    rows.append(compare(name, "Steer: next block reads the steered stream",
                        got["blocks.1.hook_resid_pre"], base[here] + 3.0 * u))
    upstream_same("Steer", got)
    downstream_moves("Steer", got)

    try:
        from concept_erasure import LeaceFitter
    except ImportError:
        rows.append(Row(name, "Erase", NA, detail="concept-erasure is not installed",
                        required=False))
    else:
        x = base[here].reshape(-1, ctx.d_model).float()
        z = (x @ u > (x @ u).median()).long()
        fitter = LeaceFitter(ctx.d_model, 1, dtype=torch.float64)
        fitter.update(x.double(), z)
        eraser = fitter.eraser
        got = _run(ctx, names, Erase(eraser, site=site))
        want = eraser(x.double()).float().reshape(base[here].shape)
        rows.append(compare(name, "Erase: site = LeaceEraser(base)", got[here], want, rtol=1e-4))
        upstream_same("Erase", got)
        downstream_moves("Erase", got)

    other = torch.roll(ctx.ids, 1, dims=0)
    with torch.no_grad():
        logits_o, cache_o = ctx.model.run_with_cache(other.to(ctx.device),
                                                     attention_mask=ctx.mask.to(ctx.device),
                                                     names_filter=[here])
    got = _run(ctx, names, Patch(cache_o[here].detach().cpu(), site=site))
    rows.append(compare(name, "Patch: site = the other input's activation", got[here],
                        cache_o[here].cpu(), rtol=0.0))
    rows.append(compare(name, "Patch (all positions): logits = the other input's logits",
                        got["logits"], logits_o.float().cpu(), rtol=1e-4))
    upstream_same("Patch", got)
    return rows


@register("kv_cache", "greedy decoding with a KV cache equals full recompute (causal LMs)")
def check_kv_cache(ctx: Context) -> list[Row]:
    name = "kv_cache"
    if not ctx.causal:
        return [Row(name, "cached decoding", NA, detail="not a causal LM", required=False)]
    ids, am = ctx.ids.to(ctx.device), ctx.mask.to(ctx.device)
    rows = []
    try:
        with torch.no_grad():
            full = ctx.model(ids, attention_mask=am, return_type="logits")
            _lg, past = ctx.model(ids[:, :-1], attention_mask=am[:, :-1], use_cache=True,
                                  past_key_values=None, return_type="logits_and_cache")
            step, _ = ctx.model(ids[:, -1:], attention_mask=am, use_cache=True,
                                past_key_values=past,
                                position_ids=torch.full_like(ids[:, -1:], ids.shape[1] - 1),
                                return_type="logits_and_cache")
        rows.append(compare(name, "bridge: one cached step = full forward (last position)",
                            step[:, -1].float(), full[:, -1].float(), rtol=1e-4))
    except Exception as e:  # an API change upstream is a failure to report, not to hide
        rows.append(Row(name, "bridge: one cached step = full forward", FAIL,
                        detail=f"{type(e).__name__}: {str(e)[:160]}"))
    rows.append(_generate_row(ctx))
    return rows


def _generate_row(ctx: Context) -> Row:
    """:func:`mechunlearn.lm.greedy` with ``kv_cache=True`` vs ``False`` under a Project
    hook at every ``hook_resid_post`` (a position-free edit, where caching is exact)."""
    from mechunlearn.interventions import Project, apply
    from mechunlearn.lm import greedy
    from mechunlearn.sites import Site
    from mechunlearn.tokens import model_tokenizer, pad_id, tokenize

    def generate(model: object, texts: list[str], max_new_tokens: int, kv_cache: bool) -> list:
        tok = model_tokenizer(model)
        return greedy(model, tokenize(tok, texts), max_new_tokens, tok.eos_token_id,
                      pad_id(tok), kv_cache=kv_cache)

    target = "greedy(kv_cache=True) = greedy(kv_cache=False) under Project hooks"
    u = _unit(ctx, 2)[None]
    ivs = [Project(u, site=Site(f"blocks.{i}.hook_resid_post", "all"))
           for i in range(ctx.n_layers)]
    prompts = ["the quick fox", "lazy dog jumps"]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with apply(ctx.model, *ivs):
                fast = generate(ctx.model, prompts, max_new_tokens=6, kv_cache=True)
                slow = generate(ctx.model, prompts, max_new_tokens=6, kv_cache=False)
    except Exception as e:
        return Row("kv_cache", target, FAIL, detail=f"{type(e).__name__}: {str(e)[:160]}")
    mism = [str(w.message)[:120] for w in caught if "FastPath" in type(w.message).__name__]
    if mism:
        return Row("kv_cache", target, FAIL, detail=f"fast path disabled itself: {mism[0]}")
    same = fast == slow
    return Row("kv_cache", target, OK if same else FAIL, float(not same), 0.0,
               "" if same else f"{fast} vs {slow}")


@register("orthogonalize", "orthogonalize_ equals activation projection at every writer; undo")
def check_orthogonalize(ctx: Context) -> list[Row]:
    from mechunlearn.hooks import add_hooks
    from mechunlearn.weights import as_basis, find_writers, orthogonalize_, project_out

    name = "orthogonalize"
    try:
        writers = find_writers(ctx.model)
    except ArchitectureError as e:
        return [Row(name, "orthogonalize_", NA, detail=str(e)[:300], required=False)]
    d = ctx.d_model
    u = as_basis(torch.randn(2, d, generator=torch.Generator().manual_seed(3)), d)
    ids, am = ctx.ids.to(ctx.device), ctx.mask.to(ctx.device)
    h = add_hooks(ctx.model, [(w.hook, lambda a: project_out(a, u)) for w in writers])
    try:
        with torch.no_grad():
            act = ctx.model(ids, attention_mask=am).float().cpu()
        unfired = h.unfired()
    finally:
        h.remove()
    rows = []
    if unfired:
        rows.append(Row(name, "writer hooks fire", FAIL, detail=f"never fired: {unfired[:3]}"))
    before = {k: v.clone() for k, v in ctx.hf.state_dict().items()}
    resid = [f"blocks.{i}.hook_resid_{k}" for i in range(ctx.n_layers) for k in ("pre", "post")]
    with orthogonalize_(ctx.model, u), torch.no_grad():
        logits, cache = ctx.model.run_with_cache(ids, attention_mask=am, names_filter=resid)
        edited = logits.float().cpu()
    parity = max_diff(edited, act)  # absolute: max |delta logit| <= 1e-4 in fp32
    rows.append(Row(name, f"weights = activation projection at {len(writers)} writers (logits)",
                    OK if parity <= 1e-4 else FAIL, parity, 1e-4))
    moved = max_diff(edited, ctx.cache["__logits__"])
    rows.append(Row(name, "the edit changes logits", OK if moved > 1e-4 else FAIL, moved, 1e-4))
    if not ctx.post_ln:
        comp = max(float((cache[n].float().cpu() @ u.T.float()).abs().max()) for n in resid)
        rows.append(Row(name, "no component along u anywhere in the residual stream",
                        OK if comp <= 1e-4 else FAIL, comp, 1e-4))
    else:
        rows.append(Row(name, "no component along u in the residual stream", NA,
                        detail="post-LN: LayerNorm after each add can put a component back; "
                        "only the writer outputs are direction-free", required=False))
    after = ctx.hf.state_dict()
    exact = all(torch.equal(before[k], after[k]) for k in before)
    rows.append(Row(name, "undo() restores every weight bit for bit", OK if exact else FAIL))
    return rows
