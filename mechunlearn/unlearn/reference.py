"""Forward passes and reference quantities shared by the unlearning loop, U2A and screening.

``snapshot`` (:func:`mechunlearn.weights.snapshot`) saves every parameter for a bit-exact undo;
``forward`` runs the model (optionally capturing one hook's activation); ``_Data`` tokenises
forget/retain sets and computes the unedited model's reference log-probs once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mechunlearn import fastpath
from mechunlearn.errors import ConfigError
from mechunlearn.fastpath import close
from mechunlearn.hooks import add_hooks
from mechunlearn.lm import plain_lm
from mechunlearn.tokens import model_tokenizer
from mechunlearn.unlearn.data import Encode, as_items, encode_items, rows, warn_overlap
from mechunlearn.unlearn.objectives import Objective, response_logprobs
from mechunlearn.weights import snapshot  # noqa: F401 (the one implementation; re-exported)


def forward(model: Any, ids: Tensor, am: Tensor, hook: str | None = None
            ) -> tuple[Tensor, Tensor | None]:
    """Logits ``[b, pos, V]`` and, with ``hook``, the activation there ``[b, pos, d]``.

    Fast path: without ``hook``, a bridge whose parameters *are* its wrapped Hugging Face
    model's (no compatibility mode, no user hooks: :func:`mechunlearn.lm.plain_lm`) runs the
    wrapped model directly (same parameters, so the same gradients; ~1.6x faster per
    training step on the toy world's GPT-2). Checked once per model class against the
    bridge's own forward (:func:`mechunlearn.fastpath.self_check`); on mismatch it warns and
    the bridge is used.
    """
    if hook is None:
        lm = _fast_lm(model, ids, am)
        if lm is not None:
            return lm(input_ids=ids, attention_mask=am).logits, None
        return model(ids, attention_mask=am), None
    box: list[Tensor] = []
    h = add_hooks(model, [(hook, lambda a: box.append(a))])
    try:
        logits = model(ids, attention_mask=am)
    finally:
        h.remove()
    return logits, box[0]


def _fast_lm(model: Any, ids: Tensor, am: Tensor) -> Any | None:
    """The wrapped HF model when it may stand in for the bridge ``model``, else None."""
    if not hasattr(model, "hook_dict"):
        return None
    lm = plain_lm(model)
    if lm is None or lm is model:
        return None
    mine = {id(p) for p in model.parameters()}
    if not mine or mine != {id(p) for p in lm.parameters()}:
        return None  # the bridge holds processed copies: editing lm would not edit it

    def compare() -> tuple[bool, float]:
        with torch.no_grad():
            return close(lm(input_ids=ids[:2], attention_mask=am[:2]).logits,
                         model(ids[:2], attention_mask=am[:2]))

    ok = fastpath.self_check(f"unlearn.hf_forward:{type(lm).__name__}", compare,
                             "The unlearning loop's direct forward of the wrapped model")
    return lm if ok else None


class _Data:
    """Tokenised forget/retain sets plus reference quantities from the unedited model."""

    def __init__(self, model: Any, forget: Sequence[Any], retain: Sequence[Any] | None,
                 obj: Objective, encode: Encode | None, chunk: int = 64) -> None:
        tok = model_tokenizer(model)
        self.forget = as_items(forget, "forget")
        self.retain = as_items(retain, "retain") if retain is not None else []
        warn_overlap(self.forget, self.retain)
        if obj.needs_good and any(x.good is None for x in self.forget):
            raise ConfigError(f"Objective {obj.name!r} needs a good response per forget item: "
                              "pass preference pairs or (prompt, bad, good) tuples.")
        self.fb = encode_items(tok, self.forget, encode)
        self.gb = encode_items(tok, self.forget, encode, "good") if obj.needs_good else None
        self.rb = encode_items(tok, self.retain, encode) if self.retain else None
        self.hook = obj.hook
        if self.hook is not None and hasattr(obj, "site"):
            obj.site.resolve(model)
        self.ref_retain: list[Tensor] = []
        self.ref_h: list[Tensor] = []
        with torch.no_grad():
            self.ref_logp = self._logp(model, self.fb, chunk)
            self.ref_good = self._logp(model, self.gb, chunk) if self.gb is not None else None
            for s in range(0, len(self.retain), chunk):
                idx = torch.arange(s, min(s + chunk, len(self.retain)))
                ids, am, _ = rows(self.rb, idx)
                lg, h = forward(model, ids, am, self.hook)
                self.ref_retain.extend(torch.log_softmax(lg.float(), -1).unbind(0))
                if h is not None:
                    self.ref_h.extend(h.detach().unbind(0))

    def quantities(self, model: Any, fi: Tensor) -> dict[str, Tensor]:
        """Inputs of ``Objective.forget`` for forget rows ``fi`` (with grad)."""
        ids, am, m = rows(self.fb, fi)
        lg, h = forward(model, ids, am, self.hook)
        logp, ntok = response_logprobs(lg, ids, m)
        f = {"logp": logp, "ntok": ntok, "ref_logp": self.ref_logp[fi], "h": h, "mask": m}
        if self.gb is not None:
            gids, gam, gm = rows(self.gb, fi)
            f["good_logp"], f["good_ntok"] = response_logprobs(forward(model, gids, gam)[0],
                                                               gids, gm)
            f["ref_good_logp"] = self.ref_good[fi]
        return f

    @staticmethod
    def _logp(model: Any, tb: Any, chunk: int) -> Tensor:
        out = []
        for s in range(0, len(tb), chunk):
            ids, am, m = rows(tb, torch.arange(s, min(s + chunk, len(tb))))
            out.append(response_logprobs(forward(model, ids, am)[0], ids, m)[0])
        return torch.cat(out)

    def ref_rows(self, idx: Tensor, pos: int, h: bool = False) -> Tensor:
        src = self.ref_h if h else self.ref_retain
        first = src[int(idx[0])]
        out = first.new_zeros((len(idx), pos, first.shape[-1]))
        for j, i in enumerate(idx):
            r = src[int(i)][:pos]
            out[j, : r.shape[0]] = r
        return out
