"""Feature labelers: text -> number, fully offline (rules, lexicons, and probes at a Site).

SEAL labels responses with a hosted LLM; here a labeler is any callable ``text -> float``
(bools count as 0/1), or a *batched* labeler (``batched = True``) called once with the list
of texts, like :class:`ProbeLabeler`, which runs a model. :func:`label` turns texts into a
DataFrame with one column per labeler.

The shipped rule labelers are deliberately simple proxies, tagged as SEAL's **target**
features (what alignment should reward: harmlessness, helpfulness) or **spoiler** features
(what it should not: length, politeness, refusal phrasing, sentiment, questions). Curly
apostrophes (``’``, common in hh-rlhf) are normalised first.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from mechunlearn.errors import ConfigError, ShapeError
from mechunlearn.features import Features
from mechunlearn.seal.errors import SiteMismatchError
from mechunlearn.sites import Site

Kind = Literal["target", "spoiler", "other"]


def _norm(text: str) -> str:
    return text.replace("\u2019", "'").replace("\u2018", "'").lower()


def _count(patterns: Sequence[str]) -> Callable[[str], int]:
    rx = re.compile(r"\b(?:" + "|".join(patterns) + r")\b")
    return lambda text: len(rx.findall(_norm(text)))


REFUSAL = [r"i'm sorry", r"i am sorry", r"i can't", r"i cannot", r"i won't", r"i will not",
           r"i'm not able", r"i am not able", r"i'm not going to", r"i don't think i can",
           r"i'd rather not", r"i would rather not", r"not comfortable", r"i refuse",
           r"i can not", r"i'm unable", r"i am unable", r"i don't want to help",
           r"that's not something i", r"i shouldn't", r"i do not feel comfortable"]
POLITE = [r"please", r"thank you", r"thanks", r"sorry", r"glad", r"happy to help",
          r"hope (?:this|that) helps", r"you're welcome", r"appreciate", r"kindly"]
POSITIVE = [r"good", r"great", r"happy", r"love", r"nice", r"wonderful", r"excellent",
            r"glad", r"helpful", r"best", r"fun", r"enjoy", r"safe", r"kind", r"healthy",
            r"positive", r"beautiful", r"like"]
NEGATIVE = [r"bad", r"terrible", r"hate", r"awful", r"wrong", r"sad", r"angry", r"stupid",
            r"ugly", r"worst", r"horrible", r"dangerous", r"illegal", r"pain", r"hurt",
            r"negative", r"evil", r"dumb", r"idiot"]
HARM = [r"kill\w*", r"murder\w*", r"steal\w*", r"stole", r"rob\w*", r"weapon\w*", r"gun\w*",
        r"bomb\w*", r"poison\w*", r"drug\w*", r"cocaine", r"heroin", r"meth", r"hack\w*",
        r"attack\w*", r"shoot\w*", r"stab\w*", r"explosive\w*", r"fraud", r"cheat\w*",
        r"porn\w*", r"racist", r"violence", r"violent", r"punch\w*", r"torture\w*",
        r"burn\w*", r"shoplift\w*", r"smuggl\w*", r"kidnap\w*", r"abuse\w*", r"revenge",
        r"hurt\w*", r"fight\w*", r"blackmail\w*", r"launder\w*", r"break into"]
HELPFUL = [r"you can", r"you could", r"you might", r"try", r"here's", r"here is",
           r"here are", r"for example", r"step", r"first", r"recommend\w*", r"suggest\w*",
           r"consider", r"option\w*", r"tips?", r"because", r"resource\w*", r"contact"]

_refusal, _polite = _count(REFUSAL), _count(POLITE)
_pos, _neg, _harm, _helpful = _count(POSITIVE), _count(NEGATIVE), _count(HARM), _count(HELPFUL)


def n_words(text: str) -> float:
    """Number of whitespace-separated words."""
    return float(len(text.split()))


def refusal(text: str) -> float:
    """1 if the text uses refusal phrasing ("I'm sorry", "I can't", ...), else 0."""
    return float(_refusal(text) > 0)


def politeness(text: str) -> float:
    """Number of politeness markers ("please", "thank you", "hope this helps", ...)."""
    return float(_polite(text))


def sentiment(text: str) -> float:
    """Lexicon sentiment: (positive - negative words) per word, in [-1, 1]."""
    return (_pos(text) - _neg(text)) / max(1.0, n_words(text))


def harm_terms(text: str) -> float:
    """Harm-lexicon hits (violence, theft, drugs, weapons, ...) per 100 words."""
    return 100.0 * _harm(text) / max(1.0, n_words(text))


def harmless(text: str) -> float:
    """Harmlessness proxy: 1 if the text contains no harm-lexicon term, else 0."""
    return float(_harm(text) == 0)


def helpfulness(text: str) -> float:
    """Helpfulness proxy: count of advice/explanation markers ("you can", "try", ...)."""
    return float(_helpful(text))


def asks_question(text: str) -> float:
    """1 if the text asks a question (contains '?'), else 0."""
    return float("?" in text)


@dataclass(frozen=True)
class Labeler:
    """A named feature labeler.

    Attributes:
        name: column name.
        fn: ``text -> float|bool`` or, if ``batched``, ``list[str] -> [n]`` array.
        kind: ``"target"``, ``"spoiler"`` or ``"other"`` (SEAL's categories).
        batched: whether ``fn`` takes the whole list of texts.
    """

    name: str
    fn: Callable[..., Any]
    kind: Kind = "other"
    batched: bool = False

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Labels ``[n]`` float64 of ``texts``."""
        if self.batched:
            out = np.asarray(self.fn(list(texts)), dtype=np.float64).reshape(-1)
        else:
            out = np.asarray([float(self.fn(t)) for t in texts], dtype=np.float64)
        if out.shape != (len(texts),):
            raise ShapeError(f"Labeler {self.name!r} returned shape {out.shape} for "
                             f"{len(texts)} texts.")
        return out


def default_labelers() -> list[Labeler]:
    """The shipped rule/lexicon labelers (targets first)."""
    return [
        Labeler("harmless", harmless, "target"),
        Labeler("helpfulness", helpfulness, "target"),
        Labeler("length", n_words, "spoiler"),
        Labeler("refusal", refusal, "spoiler"),
        Labeler("politeness", politeness, "spoiler"),
        Labeler("sentiment", sentiment, "spoiler"),
        Labeler("question", asks_question, "spoiler"),
        Labeler("harm_terms", harm_terms, "other"),
    ]


def as_labeler(name: str, obj: Any) -> Labeler:
    """Wrap a callable (or :class:`ProbeLabeler`) as a :class:`Labeler`."""
    if isinstance(obj, Labeler):
        return obj
    if not callable(obj):
        raise ConfigError(f"Labeler {name!r} must be callable, got {type(obj).__name__}.")
    return Labeler(name, obj, getattr(obj, "kind", "other"), bool(getattr(obj, "batched", False)))


def label(texts: Sequence[str],
          labelers: Sequence[Labeler] | Mapping[str, Any] | None = None) -> pd.DataFrame:
    """DataFrame ``[n, n_labelers]`` of labels (float64). Default: :func:`default_labelers`."""
    if labelers is None:
        labelers = default_labelers()
    labs = ([as_labeler(k, v) for k, v in labelers.items()] if isinstance(labelers, Mapping)
            else [as_labeler(getattr(v, "name", getattr(v, "__name__", str(i))), v)
                  for i, v in enumerate(labelers)])
    return pd.DataFrame({lab.name: lab(texts) for lab in labs})


def kinds(labelers: Sequence[Labeler]) -> dict[str, str]:
    """``{name: kind}`` of labelers."""
    return {lab.name: lab.kind for lab in labelers}


class ProbeLabeler:
    """Label texts by their projection on a direction at a Site: ``(pool(acts) - offset) . u``.

    Args:
        model: TransformerBridge with a tokenizer (used when called on texts).
        direction: ``[d]`` tensor, or a ``Directions``-like object (``.basis [k, d]`` and
            ``.site``; its top direction is used).
        site: where the direction lives; required with a raw tensor, else must match.
        threshold: if given, labels are ``projection > threshold`` (0/1).
        offset: ``[d]`` point the projection is measured from (default 0).
        max_length: tokens kept per text (the end is kept).
        kind: SEAL category of the feature.
    """

    batched = True

    def __init__(self, model: Any, direction: Any, site: Site | None = None,
                 threshold: float | None = None, offset: torch.Tensor | None = None,
                 max_length: int | None = 128, batch_size: int = 32,
                 kind: Kind = "other") -> None:
        d_site = getattr(direction, "site", None)
        if hasattr(direction, "basis"):
            direction = direction.basis[0]
        if not isinstance(direction, torch.Tensor) or direction.ndim != 1:
            raise ShapeError(f"direction must be a [d] tensor or Directions, got "
                             f"{getattr(direction, 'shape', type(direction).__name__)}.")
        if site is None and d_site is None:
            raise ConfigError("ProbeLabeler needs the Site the direction lives at (site=...).")
        if site is not None and d_site is not None and site != d_site:
            raise SiteMismatchError(f"site={site.key} but the direction was fitted at "
                                    f"{d_site.key}.")
        self.site: Site = site if site is not None else d_site
        nrm = float(direction.double().norm())
        if nrm == 0.0:
            raise ConfigError("ProbeLabeler direction has zero norm.")
        self.u = direction.double() / nrm
        self.offset = None if offset is None else offset.double()
        self.model, self.threshold, self.kind = model, threshold, kind
        self.max_length, self.batch_size = max_length, batch_size

    def project(self, features: Features) -> np.ndarray:
        """Labels ``[n]`` from precomputed features (must be at this probe's Site)."""
        if features.site != self.site:
            raise SiteMismatchError(f"Features at {features.site.key}, probe direction at "
                                    f"{self.site.key}.")
        if features.d != self.u.shape[0]:
            raise ShapeError(f"Features have d={features.d}, direction has d={self.u.shape[0]}.")
        x = features.values.double()
        if self.offset is not None:
            x = x - self.offset
        proj = (x @ self.u).numpy()
        return (proj > self.threshold).astype(np.float64) if self.threshold is not None else proj

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Labels ``[n]`` of texts (runs the model)."""
        from mechunlearn.seal.featurize import item_features

        if self.model is None:
            raise ConfigError("ProbeLabeler has no model; use .project(features) instead.")
        ids = [str(i) for i in range(len(texts))]
        f = item_features(self.model, [("", t) for t in texts], [self.site], ids,
                          self.max_length, self.batch_size, progress=False)
        return self.project(f[self.site])
