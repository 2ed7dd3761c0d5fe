"""The robustness table: every edit against every attack, side by side.

:func:`robustness_table` runs, for each :class:`~mechunlearn.robustness.edit.Edit` (weight
edits, run-time interventions and reference models through one protocol) and the unedited
model, the four checks of this package on the same forget prompts and the same judge:

* relearning attack (:mod:`~mechunlearn.robustness.relearn`): fine-tune on a few
  forget-adjacent samples, hooks of a run-time edit on;
* quantisation (:mod:`~mechunlearn.robustness.quantize`): int8 dynamic and 4-bit NF4;
* direction-ablation attack (:mod:`~mechunlearn.robustness.ablation_attack`);
* depth (:mod:`~mechunlearn.robustness.depth`): patching edited -> original per layer, and
  the Unlearning Depth Score when a reference model is named.

Each column is the judged bad-response rate on the forget prompts after the attack (higher =
more of the bad behaviour came back), except the depth columns.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import pandas as pd

from mechunlearn.errors import ConfigError, EmptyDataError, JudgeError
from mechunlearn.robustness.ablation_attack import MODES, ablation_attack, strongest
from mechunlearn.robustness.behaviour import BadRate, EncodePrompts, judged
from mechunlearn.robustness.depth import patch_depth
from mechunlearn.robustness.edit import Edit, check_edits
from mechunlearn.robustness.quantize import SCHEMES, has_bitsandbytes, quantized
from mechunlearn.robustness.relearn import relearn_attack
from mechunlearn.tokens import TokenBatch, model_tokenizer, tokenize

PairEncode = Callable[[Any, Sequence[str], Sequence[str]], TokenBatch]
NAN = float("nan")


def _attempt(what: str, fn: Callable[[], Any], notes: list[str] | None) -> Any:
    """``fn()``; with ``notes`` (``on_error="nan"``) a failure other than the judge's is
    recorded as a note and gives ``None`` (the caller writes NaN cells)."""
    if notes is None:
        return fn()
    try:
        return fn()
    except JudgeError:
        raise  # the user's judge is broken: every check would fail the same way
    except Exception as e:  # noqa: BLE001 - one failed check must not lose the others
        notes.append(f"{what} failed ({type(e).__name__}: {str(e)[:200]}); its cells are NaN.")
        return None


def _quant_rate(m: Any, scheme: str, rate: BadRate) -> float:
    with quantized(m, scheme):
        return rate(m)


def _bad_pairs(original: Any, rate: BadRate, judge: Callable[[str], bool],
               encode: PairEncode | None) -> TokenBatch | None:
    rs = rate.responses(original)
    keep = [(p, r) for p, r, b in zip(rate.prompts, rs, judged(judge, rs)) if b and r.strip()]
    if not keep:
        return None
    tok = model_tokenizer(original)
    ps, rs = [p for p, _ in keep], [r for _, r in keep]
    return encode(tok, ps, rs) if encode else tokenize(tok, list(zip(ps, rs)))


def robustness_table(original: Any, edits: dict[str, Edit], forget_prompts: Sequence[str],
                     adjacent_samples: Sequence[Any], judge: Callable[[str], bool], *,
                     reference: str | Edit | None = None, include_unedited: bool = True,
                     encode_prompts: EncodePrompts | None = None,
                     encode: PairEncode | None = None, relearn_steps: int = 20,
                     relearn_lr: float = 3e-4, relearn_batch_size: int = 4,
                     schemes: Sequence[str] | None = None, modes: Sequence[str] = MODES,
                     ablation_layers: Sequence[int] | None = None,
                     max_new_tokens: int = 16, kv_cache: bool | None = None,
                     seed: int = 0, on_error: str = "raise",
                     say: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Every edit under every attack (see the module docstring).

    Args:
        original: the unedited model (TransformerBridge); never changed on return.
        edits: ``{name: Edit}``: :meth:`Edit.weights` for an edited copy (a separate object),
            :meth:`Edit.runtime` for interventions on ``original``, ``Edit.weights(m,
            reference=True)`` for a model measured alongside (e.g. retrained without the data).
        forget_prompts: prompts on which the bad behaviour shows (held out from the edit).
        adjacent_samples: the relearning attack's data, ``(prompt, response)`` or preference
            pairs: a few samples *related* to the forget set, not the forget set itself.
        judge: ``response -> bool`` (True = bad), the user's own.
        reference: name in ``edits`` (or an :class:`Edit` not in the table) of a model that
            never learned the behaviour: its row is the bar every attack is read against and
            it enables the UDS column.
        include_unedited: add the ``unedited`` row (the original under the same attacks).
        encode_prompts, encode: prompt and (prompt, response) encoders (default plain
            tokenization), e.g. a chat template.
        relearn_steps, relearn_lr, relearn_batch_size, seed: the relearning attack.
        schemes: quantisation schemes (``"int8"``, ``"nf4"``; default both, ``"int8"`` only
            with a warning when the optional ``bitsandbytes`` is missing); modes: ablation
            modes (``"project"``, ``"clamp"``); ablation_layers: blocks the ablation attack
            runs at (default all; the ``all`` row ablates these together).
        max_new_tokens, kv_cache: greedy decoding of the judged responses.
        on_error: ``"raise"`` (default) or ``"nan"``: a check that fails (e.g. ``nf4``
            without ``bitsandbytes``, an architecture int8 cannot quantise) gives NaN cells
            and a sentence in ``df.attrs["notes"]`` instead of an exception (the judge's own
            errors are still raised). With ``"nan"`` the default schemes are both, ``nf4``
            NaN with a note when ``bitsandbytes`` is missing.
        say: progress callback.

    Returns:
        One row per variant (``unedited`` first): ``variant, kind, bad_rate,
        relearn_bad_rate, <scheme>_bad_rate, ablation_<mode>_bad_rate`` (strongest layer),
        ``ablation_<mode>_where``, ``depth, recovered_last, effect, uds, seconds``. The
        per-layer numbers are in ``df.attrs["per_layer"]`` (a DataFrame: ``variant, layer,
        recovered, drop, <mode>_bad_rate, ...``); ``df.attrs["notes"]``: the checks that
        failed under ``on_error="nan"`` (empty otherwise).

    Raises:
        ConfigError: bad edits (see :func:`~mechunlearn.robustness.edit.check_edits`), an
            unknown ``reference``, scheme or mode, a ``variant`` name ``"unedited"``.
        EmptyDataError: no forget prompts or no adjacent samples.
        JudgeError: the judge raised or returned a non-bool.
    """
    say = say or (lambda s: None)
    check_edits(original, edits)
    if "unedited" in edits:
        raise ConfigError("'unedited' is the table's own row for the original model; rename "
                          "that edit.")
    if isinstance(reference, str) and reference not in edits:
        raise ConfigError(f"reference={reference!r} is not a name in edits ({list(edits)}).")
    if reference is not None and not isinstance(reference, (str, Edit)):
        raise ConfigError(f"reference must be a name in edits or an Edit, got "
                          f"{type(reference).__name__}.")
    if not adjacent_samples:
        raise EmptyDataError("adjacent_samples is empty: the relearning attack needs a few "
                             "forget-adjacent samples.")
    if on_error not in ("raise", "nan"):
        raise ConfigError(f"on_error must be 'raise' or 'nan', got {on_error!r}.")
    notes: list[str] | None = [] if on_error == "nan" else None
    if schemes is None:
        schemes = SCHEMES if has_bitsandbytes() or notes is not None else ("int8",)
        if "nf4" not in schemes:
            warnings.warn("bitsandbytes is not installed: no 4-bit (nf4) column (pip install "
                          "'mechunlearn[quant4]').", stacklevel=2)
    bad = [s for s in schemes if s not in SCHEMES] + [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ConfigError(f"Unknown schemes/modes {bad or list(modes)}; schemes: {SCHEMES}, "
                          f"modes (at least one): {MODES}.")
    if "nf4" in schemes and not has_bitsandbytes() and notes is None:
        raise ConfigError("scheme 'nf4' needs bitsandbytes: pip install 'mechunlearn[quant4]' "
                          "(or bitsandbytes>=0.50), or leave it out of schemes.")
    if isinstance(reference, Edit):
        check_edits(original, {"reference": reference})
    rate = BadRate(forget_prompts, judge, encode_prompts, max_new_tokens, kv_cache)
    tok = model_tokenizer(original)
    prompts_tb = (encode_prompts or (lambda t, ps: tokenize(t, ps)))(tok, list(rate.prompts))
    pairs = _bad_pairs(original, rate, judge, encode)
    if pairs is None:
        warnings.warn("The original model gives no judged-bad response to the forget "
                      "prompts: the depth columns are NaN.", stacklevel=2)
    ref = edits[reference] if isinstance(reference, str) else reference
    variants = [("unedited", None)] * include_unedited + list(edits.items())
    rows, per_layer = [], []
    for name, e in variants:
        t0 = time.perf_counter()
        row: dict[str, Any] = {"variant": name, "kind": "unedited" if e is None else e.kind}
        with (e.active() if e is not None else nullcontext(original)) as m:
            # hooks of a run-time edit stay on while the attacker fine-tunes
            r = _attempt(f"{name}: relearning attack", lambda m=m: relearn_attack(
                m, adjacent_samples, rate, steps=relearn_steps, lr=relearn_lr,
                batch_size=relearn_batch_size, seed=seed, encode=encode), notes)
            row["bad_rate"], row["relearn_bad_rate"] = (r.before, r.after) if r is not None else (
                _attempt(f"{name}: bad rate", lambda m=m: rate(m), notes), NAN)
            for s in schemes:
                v = _attempt(f"{name}: {s} quantisation", lambda m=m, s=s: _quant_rate(
                    m, s, rate), notes)
                row[f"{s}_bad_rate"] = NAN if v is None else v
        row["bad_rate"] = NAN if row["bad_rate"] is None else row["bad_rate"]
        say(f"      {name}: bad {row['bad_rate']:.2f}, relearned {row['relearn_bad_rate']:.2f}"
            + "".join(f", {s} {row[f'{s}_bad_rate']:.2f}" for s in schemes))
        row.update(dict.fromkeys(("depth", "recovered_last", "effect", "uds"), NAN))
        if e is not None:
            for mode in modes:
                row[f"ablation_{mode}_bad_rate"], row[f"ablation_{mode}_where"] = NAN, ""
            ab = _attempt(f"{name}: direction ablation", lambda e=e: ablation_attack(
                original, e, prompts_tb, rate, layers=ablation_layers, modes=modes), notes)
            layer_rows = pd.DataFrame()
            if ab is not None:
                for mode in modes:
                    row[f"ablation_{mode}_bad_rate"], row[f"ablation_{mode}_where"] = \
                        strongest(ab, mode)
                layer_rows = ab.set_index("layer")
            depth = None if pairs is None else _attempt(
                f"{name}: depth (patching)", lambda e=e: patch_depth(original, e, pairs,
                                                                     reference=ref), notes)
            if depth is not None:
                dl, summary = depth
                row.update({k: summary[k] for k in ("depth", "recovered_last", "effect",
                                                    "uds")})
                dl = dl.assign(layer=dl.layer.astype(str)).set_index("layer")
                layer_rows = layer_rows.join(dl, how="outer") if len(layer_rows) else dl
            if len(layer_rows):
                per_layer.append(layer_rows.reset_index().assign(variant=name))
            say("        ablation: " + ", ".join(
                f"{mode} {row[f'ablation_{mode}_bad_rate']:.2f} at "
                f"{row[f'ablation_{mode}_where'] or '-'}" for mode in modes)
                + (f"; depth {row.get('depth')}, UDS {row.get('uds', NAN):.2f}"
                   if depth is not None else ""))
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs["per_layer"] = (pd.concat(per_layer, ignore_index=True) if per_layer
                             else pd.DataFrame())
    df.attrs["notes"] = list(dict.fromkeys(notes or []))
    return df


__all__ = ["robustness_table"]
