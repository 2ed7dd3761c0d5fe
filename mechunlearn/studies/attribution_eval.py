"""Evaluation that can fail: do attribution methods find the planted poison of a toy world?

For each held-out trigger prompt on which the tuned model gives the bad response, every method
ranks the whole training set; we score the ranking against the planted poisoned ids with ROC
AUC and precision@k (k = 10 and k = number of poisoned pairs), at every Site of a sweep
(each layer's residual stream, response-mean and last token). RepSim is always run beside the
other methods so readers can see how hard the world is. See also :mod:`.counterfactual`.

Features: a training pair is ``prompt + chosen response`` (the behaviour it teaches); a query
is ``prompt + the tuned model's bad response``; both formatted with the world's template
(:func:`mechunlearn.toyworld.encode_pairs`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from mechunlearn.attribution.base import Attributor
from mechunlearn.attribution.convex_config import ConvexConfig
from mechunlearn.attribution.registry import METHODS as REGISTRY
from mechunlearn.attribution.registry import make
from mechunlearn.attribution.registry import methods as registered
from mechunlearn.errors import ConfigError, EmptyDataError
from mechunlearn.features import extract
from mechunlearn.ranking import ranking_metrics  # noqa: F401 (re-exported)
from mechunlearn.sites import Site

METHODS = registered()  # every registered method (EK-FAC only when kronfluence is installed)
DEFAULT_METHODS = ("convex", "convex_local", "convex_grad", "repsim", "repsim_centered",
                   "repsim_whitened", "gradsim", "gradsim_whitened", "tracin", "random")


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Options of :func:`evaluate_world`.

    Attributes:
        layers: block indices of the Site sweep (default: all).
        positions: Site positions (``"response_mean"``, ``"last"``, ``"mean"``).
        methods: names from :data:`mechunlearn.attribution.METHODS` (default
            :data:`DEFAULT_METHODS`). By their ``inputs``: features of prompt + chosen vs
            prompt + bad answer at every Site; ``gradients`` (``gradsim*``, ``convex_grad``):
            loss gradients at the Site's activation (response-mean positions only), training
            loss ``grad_loss``, query loss the NLL of the bad answer; ``tracin``: count-sketched
            per-sample gradients of all parameters (reported at Site ``"params"``);
            ``contrast*``: chosen - rejected vs bad - the SFT model's greedy answer (the
            good alternative without ground truth); ``contrast+dpo``: with DPO-loss
            gradients on both sides (query: bad preferred over the SFT answer); ``ekfac`` /
            ``ekfac_dpo``: EK-FAC influence through kronfluence (NLL / DPO training loss,
            query NLL; Site ``"params"``).
        whiten: ridge of the ``*_whitened`` methods (x the covariance's mean eigenvalue).
        grad_loss: training-sample loss for ``gradients`` (``"dpo"`` with the SFT model as
            reference, as in training, or ``"nll"`` of the chosen response).
        projection_dim: count-sketch size for ``tracin``.
        max_queries: cap on bad queries (``None``: all).
        k: selected-set size reported by every method.
        convex / convex_local / convex_grad: :class:`ConvexConfig` of those methods
            (``convex_grad`` runs on unit-normalised gradients: the query's NLL gradient and
            the training DPO gradients have different scales, only directions compare).
        seed: seed of the random baseline and projections.
    """

    layers: tuple[int, ...] | None = None
    positions: tuple[str, ...] = ("response_mean", "last")
    methods: tuple[str, ...] = DEFAULT_METHODS
    grad_loss: str = "dpo"
    whiten: float = 1e-2
    projection_dim: int = 4096
    max_queries: int | None = 64
    k: int = 32
    convex: ConvexConfig = field(default_factory=ConvexConfig)
    convex_local: ConvexConfig = field(default_factory=lambda: ConvexConfig(locality=1.0))
    convex_grad: ConvexConfig = field(default_factory=lambda: ConvexConfig(
        center=False, normalize="l2", pool_metric="cosine"))
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in REGISTRY]
        if bad:
            REGISTRY[bad[0]]  # raises ConfigError (with the install command for EK-FAC)
        if self.grad_loss not in ("dpo", "nll"):
            raise ConfigError(f"grad_loss must be 'dpo' or 'nll', got {self.grad_loss!r}.")

    def options(self, method: str) -> dict[str, Any]:
        """Keyword options of ``make(method, train, **options)`` under this config (``k``
        included; the convex methods take their own :class:`ConvexConfig`, its ``k`` too)."""
        if method in ("convex", "convex_local", "convex_grad"):
            return asdict(getattr(self, method))
        if method.endswith("_whitened") and not method.startswith("contrast"):
            return {"k": self.k, "whiten": self.whiten}
        return {"k": self.k, **({"seed": self.seed} if method == "random" else {})}


def bad_queries(world: Any, max_queries: int | None = None, max_new_tokens: int = 32,
                reference_fallback: bool = False) -> tuple[list[Any], list[str]]:
    """Held-out trigger prompts on which the tuned model's greedy response is bad.

    With ``reference_fallback`` and no bad generation at all (the poison did not take), the
    prompts' reference bad responses are used instead (for smoke tests only; say so).
    """
    from mechunlearn.toyworld import generate_text, is_bad

    prompts = list(world.eval["trigger"])
    responses = generate_text(world.model, prompts, max_new_tokens=max_new_tokens)
    keep = [(p, r) for p, r in zip(prompts, responses) if is_bad(r)]
    if not keep and reference_fallback:
        keep = [(p, p.bad) for p in prompts]
    if not keep:
        raise EmptyDataError("The tuned model gave no bad response on the trigger prompts; "
                             "nothing to attribute.")
    keep = keep[:max_queries] if max_queries is not None else keep
    return [p for p, _ in keep], [r for _, r in keep]


def evaluate_world(world: Any, config: EvalConfig | None = None,
                   queries: tuple[list[Any], list[str]] | None = None,
                   progress: bool = True,
                   mean_scores: dict[tuple[str, str], Tensor] | None = None) -> pd.DataFrame:
    """Per-query ranking metrics of every method at every Site of the sweep.

    Args:
        world: a :class:`mechunlearn.toyworld.World`.
        config: :class:`EvalConfig`.
        queries: ``(eval prompts, bad responses)``; default :func:`bad_queries`.
        mean_scores: if given, filled with ``{(method, site key): scores [N]}`` averaged over
            queries (used to pick removal sets for :mod:`.counterfactual`).

    Returns a DataFrame with one row per (method, site, query): ``method, site, layer,
    position, query, auc, p@10, p@<n_poison>, residual, n_selected, seconds``.
    """
    from mechunlearn.toyworld import encode_pairs

    cfg = config or EvalConfig()
    model, tok = world.model, world.tokenizer
    n_layers = int(model.cfg.n_layers)
    layers = list(range(n_layers)) if cfg.layers is None else list(cfg.layers)
    sites = [Site(f"blocks.{i}.hook_resid_post", pos) for i in layers for pos in cfg.positions]
    q_prompts, q_resp = queries or bad_queries(world, cfg.max_queries)
    train = list(world.train)
    ids = [p.id for p in train]
    positive = torch.tensor([p.poisoned for p in train])
    n_pos = int(positive.sum())
    ks = sorted({10, n_pos})
    say = (lambda s: print(f"[attribution] {s}", flush=True)) if progress else (lambda s: None)
    say(f"{len(q_prompts)} bad queries, {len(train)} training pairs ({n_pos} poisoned), "
        f"{len(sites)} sites")
    t0 = time.perf_counter()
    tb_train = encode_pairs(tok, [p.prompt for p in train], [p.chosen for p in train])
    tb_query = encode_pairs(tok, [p.prompt for p in q_prompts], q_resp)
    f_train = extract(model, tb_train, sites, batch_size=64, ids=ids, progress=False)
    f_query = extract(model, tb_query, sites, batch_size=64, progress=False)
    say(f"features extracted in {time.perf_counter() - t0:.1f}s")
    rows: list[dict[str, Any]] = []

    def run(name: str, att: Attributor, queries_: Any, site_key: str, layer: int,
            position: str) -> None:
        total = torch.zeros(len(train), dtype=torch.float64)
        results = att.attribute_many(queries_)
        for qi, a in enumerate(results):
            total += a.scores
            m = ranking_metrics(a.scores, positive, ks)
            rows.append({"method": name, "site": site_key, "layer": layer, "position": position,
                         "query": qi, **m, "residual": a.residual, "n_selected": len(a.indices),
                         "seconds": a.seconds})
        if mean_scores is not None:
            mean_scores[(name, site_key)] = total / len(results)

    kinds = {REGISTRY[m].inputs: None for m in cfg.methods}
    by = lambda kind: [m for m in cfg.methods if REGISTRY[m].inputs == kind]  # noqa: E731
    good = None
    if "contrast" in kinds or "contrast+gradients" in kinds:
        from mechunlearn.attribution.contrast import ContrastFeatures
        from mechunlearn.toyworld import generate_text

        good = generate_text(world.sft_model, q_prompts)  # the good alternative, no ground truth
        f_rej = extract(model, encode_pairs(tok, [p.prompt for p in train],
                                            [p.rejected for p in train]), sites, batch_size=64,
                        ids=ids, progress=False)
        f_good = extract(model, encode_pairs(tok, [p.prompt for p in q_prompts], good), sites,
                         batch_size=64, progress=False)
        c_train = {s: ContrastFeatures.from_pair(f_train[s], f_rej[s]) for s in sites}
        c_query = {s: ContrastFeatures.from_pair(f_query[s], f_good[s]) for s in sites}
    for s in sites:
        for name in by("features"):
            run(name, make(name, f_train[s], **cfg.options(name)), f_query[s], s.key,
                int(s.layer), str(s.position))
        for name in by("contrast"):
            run(name, make(name, c_train[s], k=cfg.k), c_query[s], s.key, int(s.layer),
                str(s.position))
    say(f"activation methods done in {time.perf_counter() - t0:.1f}s")
    if kinds.keys() & {"gradients", "param_gradients", "contrast+gradients", "model"}:
        from mechunlearn.studies.attribution_grads import gradient_methods

        gradient_methods(world, cfg, layers, train, ids, q_prompts, q_resp, good, run, say,
                         c_train if good is not None else None,
                         c_query if good is not None else None)
    say(f"all methods done in {time.perf_counter() - t0:.1f}s")
    return pd.DataFrame(rows)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean metrics per (method, site), sorted by method then layer/position."""
    metric_cols = [c for c in df.columns if c == "auc" or c.startswith("p@")]
    agg = {c: "mean" for c in metric_cols + ["residual", "seconds"]}
    agg["query"] = "count"
    out = df.groupby(["method", "site", "layer", "position"], as_index=False).agg(agg)
    return out.rename(columns={"query": "n_queries"}).sort_values(["method", "position", "layer"])


def best_sites(summary: pd.DataFrame, metric: str = "auc") -> pd.DataFrame:
    """Each method's best Site by ``metric`` (one row per method), best first."""
    idx = summary.groupby("method")[metric].idxmax()
    return summary.loc[idx].sort_values(metric, ascending=False).reset_index(drop=True)


def plot_auc(summary: pd.DataFrame, path: str, title: str = "") -> None:
    """AUC by layer, one line per method and position; saved atomically to ``path`` (png)."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    positions = [p for p in summary["position"].unique() if p != "params"]
    fig, axes = plt.subplots(1, len(positions), figsize=(5 * len(positions), 3.8), sharey=True,
                             squeeze=False)
    colors = {m: f"C{i % 10}" for i, m in enumerate(METHODS)}
    for ax, pos in zip(axes[0], positions):
        sub = summary[summary["position"] == pos]
        for method, g in sub.groupby("method"):
            g = g.sort_values("layer")
            ax.plot(g["layer"], g["auc"], marker="o", label=method, color=colors.get(method))
        ax.set_xticks(sorted(sub["layer"].unique()))
        tr = summary[summary["method"] == "tracin"]
        if len(tr):
            ax.axhline(float(tr["auc"].iloc[0]), ls="--", c="gray", label="tracin (params)")
        ax.set_title(f"{title} position={pos}")
        ax.set_xlabel("layer (resid_post)")
        ax.set_ylim(0.0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("AUC of poisoned ids")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    from mechunlearn.atomic import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
