"""Checks on the residual stream: hooks fire with the documented layout, the residual
identities hold, and the bridge's hooks equal an independent plain ``transformers`` run.

Layouts the library assumes (``mechunlearn.sites``): ``hook_resid_pre/mid/post``,
``hook_attn_out``, ``hook_mlp_out`` are ``[batch, pos, d_model]``; ``attn.hook_z`` is
``[batch, pos, head, d_head]``; ``attn.hook_pattern`` is ``[batch, head, query, key]`` with
rows summing to 1 (and zero above the diagonal for causal models).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mechunlearn.conformance.registry import FAIL, NA, OK, Context, Row, compare, register

RESID_KINDS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out",
               "hook_mlp_out")
HEAD_KINDS = ("attn.hook_z", "attn.hook_pattern")


def _expected_shape(ctx: Context, kind: str) -> tuple[int, ...]:
    b, t, cfg = ctx.ids.shape[0], ctx.ids.shape[1], ctx.model.cfg
    if kind == "attn.hook_z":
        return (b, t, int(cfg.n_heads), int(cfg.d_head))
    if kind == "attn.hook_pattern":
        return (b, int(cfg.n_heads), t, t)
    return (b, t, ctx.d_model)


@register("hooks", "every documented hook kind exists, fires and has the documented layout")
def check_hooks(ctx: Context) -> list[Row]:
    rows = []
    for kind in RESID_KINDS + HEAD_KINDS:
        names = [f"blocks.{i}.{kind}" for i in range(ctx.n_layers)]
        missing = [n for n in names if n not in ctx.model.hook_dict]
        if missing:
            if kind == "hook_resid_mid" and ctx.parallel:
                rows.append(Row("hooks", kind, NA, detail="parallel block: attention and MLP "
                                "read the same input, there is no stream between them"))
            else:
                rows.append(Row("hooks", kind, FAIL, detail=f"not in hook_dict: {missing[:2]}"))
            continue
        unfired = [n for n in names if n not in ctx.cache]
        if unfired:
            rows.append(Row("hooks", kind, FAIL, detail=f"never fired: {unfired[:2]}"))
            continue
        want = _expected_shape(ctx, kind)
        bad = [(n, tuple(ctx.cache[n].shape)) for n in names if tuple(ctx.cache[n].shape) != want]
        if bad:
            rows.append(Row("hooks", kind, FAIL, detail=f"layout {bad[0][1]} at {bad[0][0]}, "
                            f"expected {want}"))
            continue
        value, detail = 0.0, f"shape {want}"
        if kind == "attn.hook_pattern":
            pats = torch.stack([ctx.cache[n] for n in names]).double()
            value = float((pats.sum(-1) - 1).abs().max())
            if ctx.causal:
                t = want[-1]
                upper = torch.ones(t, t, dtype=torch.bool).triu(1)
                value = max(value, float(pats[..., upper].abs().max()))
                detail += "; rows sum to 1, zero above the diagonal (causal)"
            else:
                detail += "; rows sum to 1"
        rows.append(Row("hooks", kind, OK if value <= 1e-5 else FAIL, value, 1e-5, detail))
    return rows


def _norm(block: Any, name: str) -> Any:
    comp = getattr(block, name, None)
    return getattr(comp, "_original_component", comp)


@register("residual_identity", "the residual stream is the sum of what attention and MLP write")
def check_residual_identity(ctx: Context) -> list[Row]:
    c, rows, n = ctx.cache, [], ctx.n_layers
    name = "residual_identity"
    for i in range(n):
        p = f"blocks.{i}."
        pre, attn, mlp, post = (c[p + k] for k in ("hook_resid_pre", "hook_attn_out",
                                                     "hook_mlp_out", "hook_resid_post"))
        if ctx.parallel:
            rows.append(compare(name, f"L{i}: resid_post = resid_pre + attn_out + mlp_out",
                                pre + attn + mlp, post))
        elif ctx.post_ln:
            blk = ctx.model.blocks[i]
            with torch.no_grad():
                ln1, ln2 = _norm(blk, "ln1"), _norm(blk, "ln2")
                mid = c[p + "hook_resid_mid"]
                rows.append(compare(name, f"L{i}: resid_mid = ln1(resid_pre + attn_out)",
                                    ln1(pre + attn), mid, detail="post-LN: the sum is normalised"))
                rows.append(compare(name, f"L{i}: resid_post = ln2(resid_mid + mlp_out)",
                                    ln2(mid + mlp), post, detail="post-LN: the sum is normalised"))
        else:
            mid = c[p + "hook_resid_mid"]
            rows.append(compare(name, f"L{i}: resid_mid = resid_pre + attn_out", pre + attn, mid))
            rows.append(compare(name, f"L{i}: resid_post = resid_mid + mlp_out", mid + mlp, post))
        if i + 1 < n:
            rows.append(compare(name, f"L{i}: resid_pre[{i + 1}] = resid_post[{i}]",
                                c[f"blocks.{i + 1}.hook_resid_pre"], post))
    return rows


def writer_modules(ctx: Context, i: int) -> dict[str, Any]:
    """HF modules (of the wrapped model) whose outputs are added to the residual stream in
    block ``i``: ``{"attn": ..., "mlp": ...}``; Gemma-2/3's post-norms when present."""
    blk = ctx.model.blocks[i]
    attn = _norm(blk, "ln1_post") or blk.attn.o._original_component
    mlp = _norm(blk, "ln2_post") or blk.mlp.out._original_component
    return {"attn": attn, "mlp": mlp, "o": blk.attn.o._original_component}


def plain_run(ctx: Context, ids: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Run the plain copy on ``ids`` and capture, per block ``i``: ``in.i`` (block input),
    ``out.i`` (block output), ``attn.i``/``mlp.i`` (writer outputs), ``o_in.i`` (the attention
    output projection's input); plus ``logits``."""
    got: dict[str, Tensor] = {}
    handles = []

    def pre(key: str):
        def fn(_m: Any, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else kwargs.get("hidden_states")
            got[key] = x.detach()
        return fn

    def post(key: str):
        def fn(_m: Any, _args: Any, out: Any) -> None:
            x = (out[0] if isinstance(out, tuple) else out).detach()
            if x.ndim == 2 and x.shape[0] == ids.numel():  # OPT's MLP runs on [batch*pos, d]
                x = x.reshape(*ids.shape, -1)
            got[key] = x
        return fn

    try:
        for i in range(ctx.n_layers):
            layer = ctx.plain_module(ctx.model.blocks[i]._original_component)
            handles.append(layer.register_forward_pre_hook(pre(f"in.{i}"), with_kwargs=True))
            handles.append(layer.register_forward_hook(post(f"out.{i}")))
            w = writer_modules(ctx, i)
            for k in ("attn", "mlp"):
                handles.append(ctx.plain_module(w[k]).register_forward_hook(post(f"{k}.{i}")))
            handles.append(ctx.plain_module(w["o"]).register_forward_pre_hook(
                pre(f"o_in.{i}"), with_kwargs=True))
        with torch.no_grad():
            got["logits"] = ctx.plain(input_ids=ids, attention_mask=mask).logits.detach()
    finally:
        for h in handles:
            h.remove()
    return got


@register("matches_hf", "hooks equal the tensors of an independent plain transformers run")
def check_matches_hf(ctx: Context) -> list[Row]:
    name = "matches_hf"
    if ctx.plain is None:
        return [Row(name, "plain HF copy", NA, detail="no model folder: pass folder= (or "
                    "--model DIR) to compare against plain transformers", required=False)]
    ref, c, rows = plain_run(ctx, ctx.ids, ctx.mask), ctx.cache, []
    for i in range(ctx.n_layers):
        p = f"blocks.{i}."
        rows.append(compare(name, f"L{i}: resid_pre = HF block input", c[p + "hook_resid_pre"],
                            ref[f"in.{i}"]))
        rows.append(compare(name, f"L{i}: resid_post = HF block output",
                            c[p + "hook_resid_post"], ref[f"out.{i}"]))
        rows.append(compare(name, f"L{i}: attn_out = HF attention writer output",
                            c[p + "hook_attn_out"], ref[f"attn.{i}"]))
        rows.append(compare(name, f"L{i}: mlp_out = HF MLP writer output",
                            c[p + "hook_mlp_out"], ref[f"mlp.{i}"]))
        z = c[p + "attn.hook_z"]
        rows.append(compare(name, f"L{i}: z [b,pos,head,d_head] flattened = HF o-proj input",
                            z.flatten(2), ref[f"o_in.{i}"]))
    differ = _differing_weights(ctx)
    if differ:
        rows.append(Row(name, "logits = HF logits", NA, required=False,
                        detail=f"the folder does not pin {differ[:3]}: each load initialises "
                        "them randomly (no such tensors in the checkpoint)"))
    else:
        rows.append(compare(name, "logits = HF logits", c["__logits__"], ref["logits"]))
    return rows


def _differing_weights(ctx: Context) -> list[str]:
    """Names of plain-copy tensors that differ from the wrapped model's (e.g. a head missing
    from the checkpoint, initialised at random on every load)."""
    wrapped = {k.replace("._original_component", ""): v for k, v in ctx.hf.state_dict().items()}
    return [k for k, v in ctx.plain.state_dict().items()
            if k in wrapped and not torch.equal(wrapped[k].cpu(), v)]


@register("extract", "mechunlearn.extract equals a plain HF forward on the folder tokenizer's ids")
def check_extract(ctx: Context) -> list[Row]:
    from mechunlearn.features import extract
    from mechunlearn.sites import Site
    from mechunlearn.tokens import tokenize

    name = "extract"
    if ctx.plain is None:
        return [Row(name, "extract vs plain HF", NA, detail="no model folder", required=False)]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ctx.folder))
    tb = tokenize(tok, ["the quick brown fox jumps", "lazy dog"])
    ref = plain_run(ctx, tb.input_ids, tb.attention_mask)
    am = tb.attention_mask.bool()
    last = ctx.n_layers - 1
    sites = [Site("blocks.0.hook_resid_post", "last"), Site("blocks.0.hook_resid_post", "mean"),
             Site(f"blocks.{last}.hook_resid_pre", "mean"), Site(f"blocks.{last}.hook_mlp_out", 0)]
    feats = extract(ctx.model, tb, sites)
    idx = am.sum(1) - 1
    rows = []
    for s in sites:
        key = {"hook_resid_post": "out.0", "hook_resid_pre": f"in.{last}",
               "hook_mlp_out": f"mlp.{last}"}[s.hook_name.split(".")[-1]]
        r = ref[key]
        if s.position == "last":
            want = r[torch.arange(r.shape[0]), idx]
        elif s.position == "mean":
            want = (r * am[..., None]).sum(1) / am.sum(1, keepdim=True)
        else:
            want = r[:, 0]
        rows.append(compare(name, f"{s.key} (right-padded batch)", feats[s].values, want))
    return rows
