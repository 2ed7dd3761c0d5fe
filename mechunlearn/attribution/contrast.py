"""Preference-contrast attribution: attribute what a response *prefers*, not what it *looks like*.

A preference pair ``(x, chosen, rejected)`` teaches the model to move from the rejected answer
towards the chosen one. At a Site we represent that lesson by the **contrast feature**

    c_i = phi(x_i, chosen_i) - phi(x_i, rejected_i)                 [d]

and a bad answer by the same difference between what the model said and what it should
have said,

    c_q = phi(q, bad) - phi(q, good_q)                              [d]

where ``good_q`` is a good alternative answer to the same prompt. Then any attributor runs in
contrast space: centred cosine (default), whitened cosine, or the convex decomposition
(Liu et al., arXiv:2512.13837: "closest training samples such that the query is a convex
combination of them", here a combination of *lessons*). Features that both answers of a pair share (the topic, the
prompt's wording, the trigger name in a prompt that also appears in clean pairs) cancel, so
pairs whose prompt looks like the query but which taught something else stop looking similar.

Where ``good_q`` comes from, without ground truth: the default in this library's evaluation is
the **reference model's greedy answer** (the SFT model DPO started from; see
:func:`reference_answers`), i.e. "what the model said before preference tuning". Users who know
a better answer (a human-written one, a safe completion) pass it instead. If the reference model
itself gives the bad answer the contrast is near zero and the attribution says little;
:func:`contrast_features` reports the relative norm of every contrast in ``info`` so such
queries can be spotted.

Sources: the contrast is the feature-space analogue of the DPO objective's
``log pi(chosen|x) - log pi(rejected|x)`` (Rafailov et al., "Direct Preference Optimization:
Your Language Model is Secretly a Reward Model", arXiv:2305.18290); representation similarity
as an attribution baseline follows Hanawa et al., "Evaluation of Similarity-based Explanations"
(arXiv:2006.04528); the convex decomposition is from Liu et al., "Explainable reinforcement
learning from human feedback to improve alignment" (arXiv:2512.13837).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from mechunlearn.attribution.base import Attribution, Attributor, check_k, check_same_space
from mechunlearn.attribution.convex import ConvexAttributor, ConvexConfig
from mechunlearn.attribution.similarity import RepSim
from mechunlearn.errors import ConfigError, EmptyDataError, ShapeError, check_finite
from mechunlearn.features import Features, extract
from mechunlearn.sites import Site
from mechunlearn.tokens import TokenBatch

Scorer = Literal["cosine", "convex"]


@dataclass(frozen=True)
class ContrastFeatures:
    """Contrast features ``phi(x, preferred) - phi(x, dispreferred)`` of ``n`` pairs at one Site.

    Attributes:
        values: ``[n, d]`` float32 differences.
        ids: ``n`` sample ids.
        site: the Site both sides were read at.
        fingerprint: weights hash of the model that produced them.
        rel_norm: ``[n]`` float32, ``||c|| / (||phi(preferred)|| + ||phi(dispreferred)||)``:
            near 0 when the two answers look alike at this Site (a weak contrast; e.g. the
            "good" alternative is itself bad).
    """

    values: Tensor
    ids: tuple[str, ...]
    site: Site | None
    fingerprint: str | None
    rel_norm: Tensor

    def __post_init__(self) -> None:
        if self.values.ndim != 2 or self.values.shape[0] != len(self.ids):
            raise ShapeError(f"ContrastFeatures: values {tuple(self.values.shape)} for "
                             f"{len(self.ids)} ids; expected [n, d] with one row per id.")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def d(self) -> int:
        """Feature dimension."""
        return int(self.values.shape[1])

    def subset(self, idx: Sequence[int] | Tensor) -> ContrastFeatures:
        """Rows ``idx`` (keeps Site and fingerprint)."""
        i = torch.as_tensor(idx, dtype=torch.long)
        return ContrastFeatures(self.values[i], tuple(self.ids[int(j)] for j in i), self.site,
                                self.fingerprint, self.rel_norm[i])

    def as_features(self) -> Features:
        """The differences as plain :class:`Features` (for any other attributor)."""
        return Features(self.values, self.ids, self.site, self.fingerprint)

    @classmethod
    def from_pair(cls, preferred: Features, dispreferred: Features) -> ContrastFeatures:
        """Difference of two :class:`Features` of the same samples at the same Site."""
        if not isinstance(preferred, Features) or not isinstance(dispreferred, Features):
            raise ConfigError("ContrastFeatures.from_pair takes two Features objects.")
        check_same_space(preferred.site, preferred.fingerprint, dispreferred.site,
                         dispreferred.fingerprint)
        if preferred.values.shape != dispreferred.values.shape or preferred.values.ndim != 2:
            raise ShapeError(f"preferred features {tuple(preferred.values.shape)} and "
                             f"dispreferred {tuple(dispreferred.values.shape)} must both be "
                             "[n, d] with the same n and d (one row per pair).")
        a, b = preferred.values.float(), dispreferred.values.float()
        c = a - b
        rel = c.norm(dim=1) / (a.norm(dim=1) + b.norm(dim=1)).clamp_min(1e-30)
        return cls(c, preferred.ids, preferred.site, preferred.fingerprint, rel)


def _prompts_of(data: Any) -> list[str] | None:
    if isinstance(data, TokenBatch) or isinstance(data, Tensor):
        return None
    if isinstance(data, str):
        raise ConfigError("contrast_features() expects a list of (prompt, response) pairs, "
                          "got a single str.")
    out = []
    for i, it in enumerate(data):
        if not (isinstance(it, (tuple, list)) and len(it) == 2):
            raise ConfigError(f"Item {i} is {it!r}; contrast_features() needs (prompt, "
                              "response) pairs (or a TokenBatch) on both sides.")
        out.append(it[0])
    return out


def contrast_features(
    model: Any,
    preferred: Any,
    dispreferred: Any,
    sites: Site | Sequence[Site],
    ids: Sequence[str] | None = None,
    batch_size: int = 32,
) -> ContrastFeatures | dict[Site, ContrastFeatures]:
    """Contrast features of preference pairs (or of bad answers vs good alternatives).

    Args:
        model: TransformerBridge (as for :func:`mechunlearn.features.extract`).
        preferred: ``n`` ``(prompt, response)`` pairs the data (or the model) prefers: a
            training pair's *chosen* response, or a query's *bad* response. Or a TokenBatch.
        dispreferred: the ``n`` pairs with the same prompts and the other response: a
            training pair's *rejected* response, or a query's *good* alternative.
        sites: one Site (returns :class:`ContrastFeatures`) or several (returns a dict).
        ids: sample ids (default ``"0".."n-1"``).
        batch_size: sequences per forward pass.

    Raises:
        ShapeError: the two sides have different lengths.
        ConfigError: pair ``i`` has different prompts on the two sides (a contrast must hold
            the prompt fixed), or items are not ``(prompt, response)`` pairs.
        EmptyDataError: no pairs.
    """
    pa, pb = _prompts_of(preferred), _prompts_of(dispreferred)
    if len(preferred) != len(dispreferred):
        raise ShapeError(f"contrast_features(): {len(preferred)} preferred but "
                         f"{len(dispreferred)} dispreferred samples; pass one of each per pair.")
    if len(preferred) == 0:
        raise EmptyDataError("contrast_features() got no pairs.")
    if pa is not None and pb is not None:
        for i, (x, y) in enumerate(zip(pa, pb)):
            if x != y:
                raise ConfigError(f"Pair {i}: the preferred and dispreferred sides have different "
                                  f"prompts ({x[:40]!r} vs {y[:40]!r}); a contrast keeps the "
                                  "prompt fixed.")
    single = isinstance(sites, Site)
    fa = extract(model, preferred, sites, batch_size=batch_size, ids=ids, progress=False)
    fb = extract(model, dispreferred, sites, batch_size=batch_size, ids=ids, progress=False)
    if single:
        return ContrastFeatures.from_pair(fa, fb)
    return {s: ContrastFeatures.from_pair(fa[s], fb[s]) for s in fa}


def _values(x: Any, what: str) -> tuple[Tensor, tuple[str, ...] | None, Any, Any]:
    if isinstance(x, ContrastFeatures):
        return x.values, x.ids, x.site, x.fingerprint
    if isinstance(x, Features):
        raise ConfigError(
            f"{what} are plain Features (phi of one response), not contrasts; build them with "
            "contrast_features(model, preferred, dispreferred, site) or "
            "ContrastFeatures.from_pair(phi_chosen, phi_rejected).")
    if isinstance(x, Tensor):
        return x, None, None, None
    raise ConfigError(f"{what} must be ContrastFeatures (or a Tensor of contrasts), got "
                      f"{type(x).__name__}.")


class ContrastAttributor(Attributor):
    """Attribute bad answers to preference pairs in contrast space (see module docstring).

    Args:
        train: :class:`ContrastFeatures` ``[N, d]`` of the training pairs (chosen - rejected),
            or a raw ``[N, d]`` tensor of contrasts.
        k: selected-set size (top-k for ``"cosine"``, budget for ``"convex"``).
        scorer: ``"cosine"`` (default: cosine similarity of contrasts; centred and optionally
            whitened) or ``"convex"`` (:class:`ConvexAttributor` on the contrasts).
        center: subtract the mean training contrast (the average lesson of the whole data
            set, e.g. "helpful beats refusal") before the cosine. Default True.
        whiten: ``None`` or a ridge > 0: whiten contrasts by their training covariance
            (``RepSim(whiten=...)``).
        convex: :class:`ConvexConfig` for ``scorer="convex"`` (default: ``k``, centred).
        ids: ids for a raw tensor.

    ``attribute(query)`` takes one query contrast (a one-row :class:`ContrastFeatures` or a
    ``[d]`` tensor) and returns an :class:`Attribution` with ``method="contrast_cosine"`` or
    ``"contrast_convex"``; ``attribute_set(queries)`` (from :class:`Attributor`) attributes
    several bad answers at once (mean of per-query scores).
    """

    def __init__(self, train: Any, k: int = 32, scorer: Scorer = "cosine", center: bool = True,
                 whiten: float | None = None, convex: ConvexConfig | None = None,
                 ids: Any = None) -> None:
        if scorer not in ("cosine", "convex"):
            raise ConfigError(f"scorer must be 'cosine' or 'convex', got {scorer!r}.")
        values, tids, site, fp = _values(train, "Training contrasts")
        if values.ndim != 2:
            raise ShapeError(f"Training contrasts must be [N, d], got {tuple(values.shape)}.")
        if values.shape[0] == 0:
            raise EmptyDataError("The training set is empty (0 contrasts).")
        check_finite("training contrasts", values)
        check_k(k, values.shape[0])
        feats = Features(values.float(), tids or tuple(str(i) for i in (
            ids if ids is not None else range(values.shape[0]))), site, fp)
        self.scorer, self.k, self.site, self.fingerprint = scorer, k, site, fp
        self.method = f"contrast_{scorer}"
        self.ids, self.n, self.d = feats.ids, len(feats), feats.d
        if scorer == "cosine":
            self._inner: Attributor = RepSim(feats, k=k, center=center, whiten=whiten)
        else:
            if whiten is not None:
                raise ConfigError("whiten= applies to scorer='cosine'; for 'convex' use "
                                  "ConvexConfig(normalize=...).")
            self._inner = ConvexAttributor(feats, convex or ConvexConfig(k=k, center=center))

    def attribute(self, query: Any) -> Attribution:
        """Attribute one query contrast ``[d]`` (``phi(q, bad) - phi(q, good)``)."""
        t0 = time.perf_counter()
        v, _, site, fp = _values(query, "Query contrasts")
        check_same_space(site, fp, self.site, self.fingerprint)
        if v.ndim == 2 and v.shape[0] == 1:
            v = v[0]
        a = self._inner.attribute(v)
        return Attribution(indices=a.indices, ids=a.ids, weights=a.weights, residual=a.residual,
                           scores=a.scores, method=self.method, site=self.site,
                           seconds=time.perf_counter() - t0, info=dict(a.info))

    def attribute_many(self, queries: Any) -> list[Attribution]:
        """Attribute each row of ``queries`` (ContrastFeatures ``[m, d]`` or a tensor)."""
        if isinstance(queries, ContrastFeatures):
            return [self.attribute(queries.subset([i])) for i in range(len(queries))]
        v, _, _, _ = _values(queries, "Query contrasts")
        if v.ndim != 2:
            raise ShapeError(f"Queries must be [m, d], got shape {tuple(v.shape)}.")
        return [self.attribute(row) for row in v]


def reference_answers(ref_model: Any, prompts: Sequence[str], max_new_tokens: int = 32,
                      batch_size: int = 64) -> list[str]:
    """Greedy answers of the reference (pre-preference-tuning) model: the default "good
    alternative" of a bad answer, obtained without ground truth.

    Args:
        ref_model: TransformerBridge or Hugging Face causal LM with a tokenizer (e.g. the SFT
            model DPO started from).
        prompts: ``n`` prompts exactly as the model sees them (your chat format applied).
        max_new_tokens: decoding budget.

    Returns ``n`` decoded continuations (special tokens dropped, whitespace kept), to be paired
    with the same prompts: ``contrast_features(model, [(p, bad)], [(p, good)], site)``.
    """
    from mechunlearn.lm import greedy
    from mechunlearn.tokens import model_tokenizer, tokenize

    if isinstance(prompts, str) or len(prompts) == 0:
        raise ConfigError("reference_answers() needs a non-empty list of prompts.")
    tok = model_tokenizer(ref_model)
    if tok is None:
        raise ConfigError("reference_answers(): the reference model has no tokenizer.")
    new = greedy(ref_model, tokenize(tok, list(prompts)), max_new_tokens, tok.eos_token_id,
                 tok.pad_token_id, batch_size=batch_size)
    return [tok.decode(r, skip_special_tokens=True) for r in new]
