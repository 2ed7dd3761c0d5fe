"""Checks on what trains or writes weights: activation gradients at hook points equal autograd
on an independent plain ``transformers`` copy, one unlearning step edits the weights and
``undo()`` restores them bit for bit, and ``export_hf`` of an edited model reloads in plain
``transformers`` with the edited bridge's logits."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mechunlearn.conformance.registry import FAIL, NA, OK, Context, Row, compare, max_diff, register
from mechunlearn.errors import ArchitectureError

#: (prompt, response) pairs of unequal length (the shorter row is right-padded).
PAIRS = [("the quick brown", " fox jumps over"), ("lazy", " dog jumps")]


def _pairs_batch(ctx: Context) -> Any:
    from mechunlearn.tokens import model_tokenizer, tokenize

    return tokenize(model_tokenizer(ctx.model), PAIRS)


def _grad_sites(ctx: Context) -> list[tuple[Any, str]]:
    """(Site, key of the plain copy's tensor): every block's ``resid_post``, the last block's
    ``resid_pre`` and ``mlp_out``, all at ``response_mean``."""
    from mechunlearn.sites import Site

    last = ctx.n_layers - 1
    out = [(Site(f"blocks.{i}.hook_resid_post", "response_mean"), f"out.{i}")
           for i in range(ctx.n_layers)]
    out.append((Site(f"blocks.{last}.hook_resid_pre", "response_mean"), f"in.{last}"))
    out.append((Site(f"blocks.{last}.hook_mlp_out", "response_mean"), f"mlp.{last}"))
    return out


def plain_grads(ctx: Context, tb: Any, keys: list[str]) -> dict[str, Tensor]:
    """Autograd on the plain copy: d(sum of per-row mean response NLL) / d(tensor) for each
    key (``in.i``/``out.i``: block input/output, ``mlp.i``: the MLP writer's output)."""
    from mechunlearn.conformance.stream import writer_modules
    from mechunlearn.lm import response_logprobs

    plain, got, handles = _pinned_plain(ctx), {}, []

    def keep(key: str, x: Tensor) -> None:
        got[key] = x

    def pre(key: str):
        def fn(_m: Any, args: tuple, kwargs: dict) -> None:
            keep(key, args[0] if args else kwargs["hidden_states"])
        return fn

    def post(key: str):
        def fn(_m: Any, _args: Any, out: Any) -> None:
            keep(key, out[0] if isinstance(out, tuple) else out)
        return fn

    try:
        for key in keys:
            kind, i = key.split(".")
            block = _same(plain, ctx, ctx.model.blocks[int(i)]._original_component)
            if kind == "in":
                handles.append(block.register_forward_pre_hook(pre(key), with_kwargs=True))
            elif kind == "out":
                handles.append(block.register_forward_hook(post(key)))
            else:
                mod = _same(plain, ctx, writer_modules(ctx, int(i))[kind])
                handles.append(mod.register_forward_hook(post(key)))
        with torch.enable_grad():
            logits = plain(input_ids=tb.input_ids, attention_mask=tb.attention_mask).logits
            m = tb.response_mask.bool() & tb.attention_mask.bool()
            s, n = response_logprobs(logits, tb.input_ids, m)
            loss = (-(s / n)).sum()
            grads = torch.autograd.grad(loss, [got[k] for k in keys])
    finally:
        for h in handles:
            h.remove()
    # OPT's MLP runs on [batch*pos, d]: its gradient is reshaped to [batch, pos, d]
    return {k: g.reshape(*tb.input_ids.shape, -1) if g.ndim == 2 else g
            for k, g in zip(keys, grads)}


def _pinned_plain(ctx: Context) -> Any:
    """The plain copy, or, when the folder does not pin some tensors (e.g. all-MiniLM-L6-v2's
    masked-LM head, initialised randomly on each load), a copy of it holding the wrapped
    model's values for those tensors only (the loss depends on the head)."""
    from mechunlearn.conformance.stream import _differing_weights

    saved = _checkpoint_keys(ctx.folder)
    differ = [k for k in _differing_weights(ctx) if k not in saved]
    if not differ:
        return ctx.plain
    import copy

    wrapped = {k.replace("._original_component", ""): v for k, v in ctx.hf.state_dict().items()}
    plain = copy.deepcopy(ctx.plain)
    with torch.no_grad():
        state = plain.state_dict()
        for k in differ:
            state[k].copy_(wrapped[k].to(state[k].device))
    ctx.extra["unpinned"] = differ
    return plain


def _checkpoint_keys(folder: Path | None) -> set[str]:
    """Tensor names stored in the folder's safetensors files (empty if none)."""
    from safetensors import safe_open

    keys: set[str] = set()
    for f in sorted(Path(folder).glob("*.safetensors")) if folder is not None else []:
        with safe_open(str(f), "pt") as h:
            keys.update(h.keys())
    return keys


def _same(plain: Any, ctx: Context, module: Any) -> Any:
    """``plain``'s module at the place of ``module`` (see :meth:`Context.plain_module`)."""
    name = next(n for n, m in ctx.plain.named_modules() if m is ctx.plain_module(module))
    return plain.get_submodule(name)


@register("gradients", "activation gradients at hook points (backward hooks) = plain autograd")
def check_gradients(ctx: Context) -> list[Row]:
    from mechunlearn.attribution.gradient import gradient_features

    name = "gradients"
    if ctx.plain is None:
        return [Row(name, "gradients vs plain HF", NA, detail="no model folder",
                    required=False)]
    sites = _grad_sites(ctx)
    feats = gradient_features(ctx.model, PAIRS, [s for s, _ in sites], loss="nll")
    tb = _pairs_batch(ctx)
    ref = plain_grads(ctx, tb, [k for _, k in sites])
    m = (tb.response_mask.bool() & tb.attention_mask.bool()).double()[..., None]
    rows = []
    if ctx.extra.get("unpinned"):
        rows.append(Row(name, "plain copy: tensors the folder does not pin", NA, required=False,
                        detail=f"{ctx.extra['unpinned'][:3]} are random on each load: the "
                        "reference uses the model's values for those only"))
    for s, key in sites:
        got = feats[s].values
        want = (ref[key].double() * m).sum(1) / m.sum(1)
        norm = float(got.double().norm(dim=-1).min())
        rows.append(Row(name, f"{s.key}: non-empty, every row's gradient nonzero",
                        OK if got.shape == want.shape and norm > 0 else FAIL, norm, 0.0,
                        f"shape {tuple(got.shape)}"))
        rows.append(compare(name, f"{s.key} = plain HF autograd", got, want, rtol=1e-4))
    return rows


def _weights(ctx: Context) -> dict[str, Tensor]:
    """Every tensor of the bridge and of the wrapped HF model, cloned."""
    out = {f"bridge.{k}": v.detach().clone() for k, v in ctx.model.state_dict().items()}
    out.update({f"hf.{k}": v.detach().clone() for k, v in ctx.hf.state_dict().items()})
    return out


def _logits(ctx: Context, model: Any = None) -> Tensor:
    ids, am = ctx.ids.to(ctx.device), ctx.mask.to(ctx.device)
    with torch.no_grad():
        return (model or ctx.model)(ids, attention_mask=am).float().cpu()


@register("unlearn", "one unlearning step changes the weights; undo() restores them bit for bit")
def check_unlearn(ctx: Context) -> list[Row]:
    from mechunlearn.unlearn.loop import UnlearnConfig, unlearn

    name = "unlearn"
    before = _weights(ctx)
    base = _logits(ctx)
    cfg = UnlearnConfig(steps=1, repair_steps=0, eval_every=1, lr=1e-2, guard=None)
    res = unlearn(ctx.model, forget=[PAIRS[0]], retain=[PAIRS[1]], objective="npo", config=cfg,
                  progress=False)
    try:
        moved = [k for k, v in _weights(ctx).items() if not torch.equal(v, before[k])]
        after = _logits(ctx)
    finally:
        res.undo()
    rows = [Row(name, "one npo step ran", OK if res.steps == 1 else FAIL,
                detail=f"{res.steps} step(s), stopped: {res.stopped}"),
            Row(name, "the step changes weights", OK if moved else FAIL, float(len(moved)), 0.0,
                f"{len(moved)} of {len(before)} tensors changed"),
            Row(name, "the step changes logits", OK if max_diff(after, base) > 1e-6 else FAIL,
                max_diff(after, base), 1e-6)]
    restored = _weights(ctx)
    bad = [k for k in before if not torch.equal(before[k], restored[k])]
    rows.append(Row(name, "undo() restores every weight bit for bit", OK if not bad else FAIL,
                    float(len(bad)), 0.0, f"differ: {bad[:3]}" if bad else ""))
    rows.append(compare(name, "logits after undo() = before", _logits(ctx), base, rtol=0.0))
    return rows


@register("export_hf", "export_hf of an orthogonalised model reloads in plain transformers")
def check_export(ctx: Context) -> list[Row]:
    from mechunlearn.weights import as_basis, orthogonalize_

    name = "export_hf"
    u = as_basis(torch.randn(1, ctx.d_model, generator=torch.Generator().manual_seed(5)),
                 ctx.d_model)
    writers, note = None, ""
    try:
        handle = orthogonalize_(ctx.model, u)
    except ArchitectureError as e:  # Gemma-2/3: only the embeddings can be edited
        writers, note = ["embed"], f"embeddings only ({str(e)[:60]}...)"
        handle = orthogonalize_(ctx.model, u, writers=writers)
    with handle, tempfile.TemporaryDirectory() as tmp:
        edited = _logits(ctx)
        out = _export(ctx, Path(tmp) / "edited")
        reloaded = type(ctx.hf).from_pretrained(str(out)).to(ctx.device).eval()
        got = _logits(ctx, _HFLogits(reloaded))
    moved = max_diff(edited, ctx.cache["__logits__"])
    return [Row(name, "the exported edit changes logits", OK if moved > 1e-4 else FAIL, moved,
                1e-4, note),
            compare(name, f"plain {type(reloaded).__name__} reload = edited bridge (logits)",
                    got, edited, rtol=1e-5, detail=note)]


def _export(ctx: Context, path: Path) -> Path:
    from mechunlearn.weights import export_hf

    return export_hf(ctx.model, path, check=False)  # the comparison is this check's own


class _HFLogits:
    """Call a plain HF model like the bridge: ``(ids, attention_mask=) -> logits``."""

    def __init__(self, hf: Any) -> None:
        self.hf = hf

    def __call__(self, ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.hf(input_ids=ids, attention_mask=attention_mask).logits
