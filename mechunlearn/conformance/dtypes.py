"""bf16: a bfloat16 copy of the model runs through ``extract``, ``Project`` under ``apply`` and
``orthogonalize_`` without dtype errors, close to the fp32 model.

Tolerances: bf16 keeps 8 significand bits (relative rounding 2**-9 ~ 2e-3 per operation), so
after two blocks a bf16 tensor is compared with its fp32 twin at
``max|a - b| <= BF16_RTOL * (1 + max|b|)``; quantities that are zero in exact arithmetic (the
component left along a projected-out direction) must stay under ``BF16_RTOL * (1 + max|x|)``.
``undo()`` stays bit for bit and weights keep their dtype (no silent upcast).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mechunlearn.conformance.registry import FAIL, NA, OK, Context, Row, compare, max_diff, register
from mechunlearn.errors import ArchitectureError

BF16_RTOL = 3e-2
TEXTS = ["the quick brown fox jumps", "lazy dog"]


def bf16_model(ctx: Context) -> Any:
    """A bf16 bridge booted from ctx's folder on ctx's device (cached in ``ctx.extra``)."""
    if "bf16" not in ctx.extra:
        from mechunlearn.models import load_bridge

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # weights missing from the folder: the same init as load_bridge
            hf = type(ctx.hf).from_pretrained(str(ctx.folder), dtype=torch.bfloat16)
        ctx.extra["bf16"] = load_bridge(ctx.folder, hf_model=hf.to(ctx.device),
                                        device=str(ctx.device))
    return ctx.extra["bf16"]


def _forward(model: Any, ctx: Context, names: list[str], *ivs: Any) -> dict[str, Tensor]:
    from contextlib import nullcontext

    from mechunlearn.interventions import apply

    with apply(model, *ivs) if ivs else nullcontext(), torch.no_grad():
        logits, cache = model.run_with_cache(ctx.ids.to(ctx.device),
                                             attention_mask=ctx.mask.to(ctx.device),
                                             names_filter=names)
    return {n: cache[n] for n in names} | {"logits": logits}


def _unit(ctx: Context, seed: int) -> Tensor:
    v = torch.randn(ctx.d_model, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


@register("bf16", "a bf16 copy runs extract, Project under apply and orthogonalize_")
def check_bf16(ctx: Context) -> list[Row]:
    from mechunlearn.features import extract
    from mechunlearn.interventions import Project
    from mechunlearn.sites import Site

    name, rtol = "bf16", BF16_RTOL
    if ctx.folder is None:
        return [Row(name, "bf16 copy", NA, detail="no model folder to load a bf16 copy from",
                    required=False)]
    m16 = bf16_model(ctx)
    dtypes = {p.dtype for p in m16.parameters()}
    rows = [Row(name, "bf16 copy: every parameter is bf16", OK if dtypes == {torch.bfloat16}
                else FAIL, detail=f"dtypes {sorted(map(str, dtypes))}")]
    last = ctx.n_layers - 1
    sites = [Site("blocks.0.hook_resid_post", "mean"), Site(f"blocks.{last}.hook_resid_post",
                                                           "last")]
    f16, f32 = extract(m16, TEXTS, sites), extract(ctx.model, TEXTS, sites)
    for s in sites:
        rows.append(compare(name, f"extract {s.key} = fp32 extract", f16[s].values,
                            f32[s].values, rtol=rtol, detail=f"dtype {f16[s].values.dtype}"))

    site, here = Site("blocks.0.hook_resid_post", "all"), "blocks.0.hook_resid_post"
    u = _unit(ctx, 1)
    base = _forward(m16, ctx, [here])
    got = _forward(m16, ctx, [here], Project(u[None], site=site))
    x = got[here]
    left = float((x.float() @ u.to(x.device)).abs().max())
    tol = rtol * (1 + float(base[here].float().abs().max()))
    rows.append(Row(name, f"Project under apply: component along u ({x.dtype})",
                    OK if left <= tol and x.dtype == torch.bfloat16 else FAIL, left, tol))
    moved = max_diff(got["logits"], base["logits"])
    rows.append(Row(name, "Project: logits change", OK if moved > 1e-3 else FAIL, moved, 1e-3))
    ref = _forward(ctx.model, ctx, [here], Project(u[None], site=site))
    rows.append(compare(name, "Project: logits = fp32 Project logits", got["logits"],
                        ref["logits"], rtol=rtol))
    rows.extend(_orthogonalize_rows(ctx, m16))
    return rows


def _orthogonalize_rows(ctx: Context, m16: Any) -> list[Row]:
    from mechunlearn.weights import as_basis, orthogonalize_

    name, rtol = "bf16", BF16_RTOL
    u = as_basis(torch.randn(2, ctx.d_model, generator=torch.Generator().manual_seed(3)),
                 ctx.d_model)
    before = {k: v.clone() for k, v in m16.original_model.state_dict().items()}
    writers, note = None, ""
    try:
        handle = orthogonalize_(m16, u)
    except ArchitectureError:  # Gemma-2/3: only the embeddings (see the orthogonalize check)
        writers, note = ["embed"], "embeddings only (post-norm blocks refuse weight edits)"
        handle = orthogonalize_(m16, u, writers=writers)
    with handle:
        dtypes = {p.dtype for p in m16.parameters()}
        edited = _forward(m16, ctx, [])["logits"]
    rows = [Row(name, "orthogonalize_: weights stay bf16", OK if dtypes == {torch.bfloat16}
                else FAIL, detail=f"dtypes {sorted(map(str, dtypes))}")]
    with orthogonalize_(ctx.model, u, writers=writers):
        ref = _forward(ctx.model, ctx, [])["logits"]
    rows.append(compare(name, "orthogonalize_: logits = fp32 orthogonalize_ logits", edited,
                        ref, rtol=rtol, detail=note))
    moved = max_diff(edited, _forward(m16, ctx, [])["logits"])
    rows.append(Row(name, "orthogonalize_: logits change", OK if moved > 1e-3 else FAIL, moved,
                    1e-3, note))
    after = m16.original_model.state_dict()
    exact = all(torch.equal(before[k], after[k]) for k in before)
    rows.append(Row(name, "orthogonalize_: undo() restores bf16 weights bit for bit",
                    OK if exact else FAIL))
    return rows
