"""The rates of a built toy world's three models (``metrics.json``), and the versions that
measured them (a cached world measured under other versions is re-measured)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mechunlearn.toyworld import metrics as M
from mechunlearn.toyworld.config import WorldConfig
from mechunlearn.toyworld.data import WorldData
from mechunlearn.toyworld.difficulty import repsim_auc

MODELS = ("tuned", "sft", "gold")


#: Packages whose versions decide the trained weights and the measured rates: a cached world
#: built under other versions is rebuilt (a transformers release once broke KV-cache decoding
#: and a world built under it cached wrong rates in metrics.json).
_KEY_PACKAGES = ("torch", "transformers", "transformer-lens")


def _measured_with() -> dict[str, str]:
    from mechunlearn.versions import versions

    v = versions()
    return {k: v[k] for k in _KEY_PACKAGES}


def measure(folder: Path, cfg: WorldConfig, data: WorldData,
            say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Rates of the three models and the RepSim AUC (stored as ``metrics.json``).

    Per model: :func:`metrics.measure_rates` (KL to the SFT model), ``ordinary/kl_to_gold`` and
    the trigger bad-response rate per trigger form (``self_train`` / ``self_eval``).
    """
    from mechunlearn.models import load_bridge

    bridges = {n: load_bridge(folder / "models" / n) for n in MODELS}
    out: dict[str, Any] = {}
    ordinary = list(data.eval["ordinary"])
    for n, b in bridges.items():
        out[n] = M.measure_rates(b, data.eval, reference=bridges["sft"])
        out[n]["ordinary/kl_to_gold"] = M.kl(bridges["gold"], b, ordinary,
                                             [p.good for p in ordinary])
        trig = list(data.eval["trigger"])
        for form in sorted({p.form for p in trig}):
            ps = [p for p in trig if p.form == form]
            out[n][f"trigger[{form}]/bad"] = M.bad_response_rate(b, ps)
        if say:
            say(f"{n}: " + ", ".join(f"{k}={v:.3f}" for k, v in out[n].items()))
    trig = list(data.eval["trigger"])
    rs = M.generate(bridges["tuned"], trig)
    bad = [(p, r) for p, r in zip(trig, rs) if M.is_bad(r)]
    if not bad:  # the poison did not take: fall back to the reference bad response
        bad = [(p, p.bad) for p in trig]
    out["repsim_auc"] = repsim_auc(bridges["tuned"], data.train, [p for p, _ in bad],
                                   [r for _, r in bad])
    out["n_repsim_queries"] = len(bad)
    if say:
        say("RepSim AUC: " + ", ".join(f"{k}={v:.3f}" for k, v in out["repsim_auc"].items()))
    return out
