"""``METHODS``: every attribution method by name, with one interface.

``METHODS[name].build(train, k=k, **options) -> Attributor``; the attributor's
``attribute_many(queries)`` returns one :class:`~mechunlearn.attribution.base.Attribution` per
query. What ``train`` and ``queries`` are depends on the method's ``inputs``:

* ``"features"``: activations at a Site, ``phi(x, chosen)`` / ``phi(q, bad)``
  (:class:`~mechunlearn.features.Features`, tensors or a FeatureStore);
* ``"gradients"``: per-sample loss gradients at a Site's activation
  (:func:`~mechunlearn.attribution.gradient.gradient_features`);
* ``"param_gradients"``: count-sketched per-sample gradients of all parameters (TracIn);
* ``"contrast"``: preference-contrast features ``phi(x, chosen) - phi(x, rejected)`` /
  ``phi(q, bad) - phi(q, good)`` (:class:`~mechunlearn.attribution.contrast.ContrastFeatures`);
* ``"contrast+gradients"``: a tuple ``(contrasts, DPO-loss gradients)`` on both sides;
* ``"model"``: texts, with ``model=`` (and ``ref_model=`` for DPO) in ``options``: training
  ``(prompt, response)`` pairs or ``(prompt, chosen, rejected)`` triples, queries
  ``(prompt, bad_response)`` pairs (EK-FAC influence; registered only when ``kronfluence`` is
  installed, otherwise looking it up raises :class:`ConfigError` with the install command).

``methods("features")`` lists the names that work on plain features (the CLI's
``attribute --method`` choices).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from mechunlearn.attribution.base import Attributor
from mechunlearn.errors import ConfigError

Inputs = Literal["features", "gradients", "param_gradients", "contrast", "contrast+gradients",
                 "model"]
EKFAC = ("ekfac", "ekfac_dpo")


@dataclass(frozen=True)
class Method:
    """One registered method: ``build(train, k=k, **options) -> Attributor``.

    Attributes:
        name: registry key (also the ``method`` of its results, except the contrast family,
            whose results say ``contrast_cosine`` / ``contrast_convex``).
        inputs: what ``train`` and the queries are (see the module docstring).
        build: constructor.
        summary: one line for tables and ``--help``.
        weighted: ``True`` when the results' ``weights`` are the method's own (a convex
            decomposition's coefficients, with a ``residual``); ``False`` for score-based
            methods, whose ``weights`` are a uniform ``1/k`` over the top ``k`` scores and whose
            ``residual`` is ``nan`` (report their ``scores``, not weights).
    """

    name: str
    inputs: Inputs
    build: Callable[..., Attributor]
    summary: str
    weighted: bool = False


def _convex(**cfg: Any) -> Callable[..., Attributor]:
    def build(train: Any, k: int = 32, **options: Any) -> Attributor:
        from mechunlearn.attribution.convex import ConvexAttributor, ConvexConfig

        return ConvexAttributor(train, ConvexConfig(**{"k": k, **cfg, **options}))
    return build


def _repsim(**kw: Any) -> Callable[..., Attributor]:
    def build(train: Any, k: int = 32, **options: Any) -> Attributor:
        from mechunlearn.attribution.similarity import RepSim

        return RepSim(train, k=k, **{**kw, **options})
    return build


def _gradsim(**kw: Any) -> Callable[..., Attributor]:
    def build(train: Any, k: int = 32, **options: Any) -> Attributor:
        from mechunlearn.attribution.gradient import GradSim

        return GradSim(train, k=k, **{**kw, **options})
    return build


def _contrast(**kw: Any) -> Callable[..., Attributor]:
    def build(train: Any, k: int = 32, **options: Any) -> Attributor:
        from mechunlearn.attribution.contrast import ContrastAttributor

        return ContrastAttributor(train, k=k, **{**kw, **options})
    return build


def _random(train: Any, k: int = 32, **options: Any) -> Attributor:
    from mechunlearn.attribution.similarity import RandomAttributor

    return RandomAttributor(train, k=k, **options)


def _contrast_dpo(train: Any, k: int = 32, **options: Any) -> Attributor:
    from mechunlearn.attribution.contrast import ContrastAttributor
    from mechunlearn.attribution.ensemble import ZMeanAttributor
    from mechunlearn.attribution.gradient import GradSim

    if not (isinstance(train, (tuple, list)) and len(train) == 2):
        raise ConfigError("contrast+dpo needs train=(contrast features, DPO-loss gradient "
                          "features) of the same training pairs.")
    return ZMeanAttributor([ContrastAttributor(train[0], k=k),
                            GradSim(train[1], k=k, center=True)], k=k, method="contrast+dpo")


def _ekfac(loss: str) -> Callable[..., Attributor]:
    def build(train: Any, k: int = 32, **options: Any) -> Attributor:
        from mechunlearn.attribution.influence import EKFACAttributor

        if "model" not in options:
            raise ConfigError("EK-FAC works on the model and texts: pass model= (and "
                              "ref_model= for the DPO loss) in the options.")
        model = options.pop("model")
        return EKFACAttributor(model, train, loss=loss, k=k, **options)
    return build


class _Registry(dict):
    """A dict whose missing keys raise :class:`ConfigError` naming the choices."""

    def __missing__(self, name: str) -> Method:
        if name in EKFAC:
            from mechunlearn.attribution.influence import INSTALL

            raise ConfigError(f"Attribution method {name!r} (EK-FAC influence) needs the "
                              f"optional package kronfluence: {INSTALL}.")
        raise ConfigError(f"Unknown attribution method {name!r}; choose from {sorted(self)}.")


def _all() -> _Registry:
    from mechunlearn.attribution.influence import kronfluence_available

    rows = [
        Method("convex", "features", _convex(), "convex decomposition (Liu et al., "
               "arXiv:2512.13837), defaults", weighted=True),
        Method("convex_local", "features", _convex(locality=1.0),
               "convex decomposition preferring samples close to the query (locality 1)",
               weighted=True),
        Method("repsim", "features", _repsim(), "cosine similarity of features"),
        Method("repsim_centered", "features", _repsim(center=True),
               "cosine after subtracting the training mean"),
        Method("repsim_whitened", "features", _repsim(whiten=1e-2),
               "cosine after whitening by the training covariance (ridge 1e-2)"),
        Method("random", "features", _random, "seeded random scores (chance level)"),
        Method("gradsim", "gradients", _gradsim(), "cosine of loss gradients at the Site"),
        Method("gradsim_centered", "gradients", _gradsim(center=True),
               "centred cosine of loss gradients at the Site"),
        Method("gradsim_whitened", "gradients", _gradsim(whiten=1e-2),
               "cosine of whitened loss gradients at the Site"),
        Method("convex_grad", "gradients",
               _convex(center=False, normalize="l2", pool_metric="cosine"),
               "convex decomposition of unit-normalised loss gradients", weighted=True),
        Method("tracin", "param_gradients", _gradsim(),
               "cosine of count-sketched parameter gradients (TracIn, one checkpoint)"),
        Method("contrast", "contrast", _contrast(),
               "centred cosine of preference contrasts (chosen - rejected vs bad - good)"),
        Method("contrast_raw", "contrast", _contrast(center=False),
               "uncentred cosine of preference contrasts"),
        Method("contrast_whitened", "contrast", _contrast(whiten=1e-2),
               "whitened cosine of preference contrasts"),
        Method("contrast_convex", "contrast", _contrast(scorer="convex"),
               "convex decomposition of preference contrasts", weighted=True),
        Method("contrast+dpo", "contrast+gradients", _contrast_dpo,
               "mean z-score of contrast and centred DPO-gradient cosines"),
    ]
    if kronfluence_available():
        rows += [Method("ekfac", "model", _ekfac("nll"),
                        "EK-FAC influence (kronfluence), training loss NLL of the response"),
                 Method("ekfac_dpo", "model", _ekfac("dpo"),
                        "EK-FAC influence (kronfluence), training loss DPO")]
    return _Registry({m.name: m for m in rows})


METHODS: dict[str, Method] = _all()


def methods(inputs: Inputs | None = None) -> tuple[str, ...]:
    """Registered method names, optionally only those taking ``inputs``."""
    return tuple(n for n, m in METHODS.items() if inputs is None or m.inputs == inputs)


def make(name: str, train: Any, k: int = 32, **options: Any) -> Attributor:
    """``METHODS[name].build(train, k=k, **options)``; unknown names raise
    :class:`ConfigError` listing the choices (EK-FAC without kronfluence: the install)."""
    return METHODS[name].build(train, k=k, **options)
