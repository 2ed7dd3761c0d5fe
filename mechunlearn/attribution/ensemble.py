"""Equal-weight ensemble of attributors: the mean of per-query z-scored scores.

Two views of the same lesson (e.g. preference-contrast features and DPO-loss gradients at one
Site) rank the training set differently; z-scoring each view's scores over the training set
and averaging them (no weights to tune) keeps what both agree on. Used for the registered
``"contrast+dpo"`` method (docs/attribution.md, "Preference-contrast attribution").
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from mechunlearn.attribution.base import Attribution, Attributor, check_k
from mechunlearn.attribution.similarity import ranked_attribution
from mechunlearn.errors import ConfigError, ShapeError


def zscore(s: Tensor) -> Tensor:
    """``(s - mean) / std`` of scores ``[N]`` in float64 (std floored at 1e-30)."""
    s = s.double()
    return (s - s.mean()) / s.std().clamp_min(1e-30)


class ZMeanAttributor(Attributor):
    """Mean of the z-scored per-query scores of several attributors over one training set.

    Args:
        parts: attributors over the same ``N`` training samples (same order).
        k: selected-set size (top-k of the mean z-score, uniform weights).
        method: name of the result (e.g. ``"contrast+dpo"``).

    ``attribute(query)`` takes one query per part (a tuple, in the parts' order);
    ``attribute_many(queries)`` a tuple of per-part query batches of equal length.
    Raises :class:`ConfigError` for no parts or mismatched training sizes,
    :class:`ShapeError` when the parts' query batches differ in length.
    """

    def __init__(self, parts: Sequence[Attributor], k: int = 32, method: str = "ensemble") -> None:
        if not parts:
            raise ConfigError("ZMeanAttributor needs at least one attributor.")
        ns = {int(p.n) for p in parts}
        if len(ns) != 1:
            raise ConfigError(f"ZMeanAttributor parts score training sets of sizes {sorted(ns)}; "
                              "they must rank the same training samples.")
        self.parts, self.n, self.method = list(parts), ns.pop(), method
        check_k(k, self.n)
        self.k, self.ids = k, parts[0].ids
        self.site = getattr(parts[0], "site", None)

    def attribute(self, query: Any) -> Attribution:
        """One query: a tuple with one query per part."""
        return self.attribute_many(tuple([q] for q in query))[0]

    def attribute_many(self, queries: Any) -> list[Attribution]:
        """``queries``: a tuple with one ``[m, ...]`` query batch per part."""
        if not isinstance(queries, (tuple, list)) or len(queries) != len(self.parts):
            raise ConfigError(f"{self.method}: pass one query batch per part "
                              f"({len(self.parts)}), as a tuple.")
        views = [p.attribute_many(q) for p, q in zip(self.parts, queries)]
        if len({len(v) for v in views}) != 1:
            raise ShapeError(f"{self.method}: the parts got {[len(v) for v in views]} queries; "
                             "pass the same queries to every part.")
        out = []
        for per in zip(*views):
            s = sum(zscore(a.scores) for a in per) / len(per)
            a = ranked_attribution(s, self.k, self.ids, self.method, self.site,
                                   time.perf_counter(), {})
            out.append(Attribution(a.indices, a.ids, a.weights, a.residual, a.scores, a.method,
                                   a.site, sum(x.seconds for x in per), {}))
        return out
