"""Direction-ablation attack: is the edit one direction that an attacker can undo?

Arditi et al. ("Refusal in Language Models Is Mediated by a Single Direction",
arXiv:2406.11717) showed that one difference-of-means direction in the residual stream can
carry a behaviour; Łucki et al. ("An Adversarial Perspective on Machine Unlearning for AI
Safety", arXiv:2409.18025) projected out the direction separating an RMU-unlearned model's
activations from the original's and got most of the "removed" knowledge back. Here, per layer
``l`` (``blocks.l.hook_resid_post``, last prompt token of the forget prompts):

1. the unit difference of means between the edited and the original model's activations
   (:func:`mechunlearn.directions.mean_diff`, edited = X+);
2. in the edited model, at every position of that layer, either ``"project"`` it out
   (:class:`~mechunlearn.interventions.Project`, the attack of both papers) or ``"clamp"`` the
   coordinate along it to the original model's mean (:class:`~mechunlearn.interventions.Clamp`):
   projecting out again cannot undo an edit that itself projected the direction out, clamping
   to the original's mean can (it also undoes an added steering vector);
3. the bad-response rate with the attack on, per layer and with every layer's attack at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import pandas as pd

from mechunlearn.directions import Directions, mean_diff
from mechunlearn.errors import ConfigError
from mechunlearn.features import extract
from mechunlearn.interventions import Clamp, Compose, Project, apply
from mechunlearn.robustness.edit import Edit
from mechunlearn.sites import Site
from mechunlearn.tokens import TokenBatch

Mode = Literal["project", "clamp"]
MODES: tuple[str, ...] = ("project", "clamp")


def resid_site(layer: int, position: Any = "last") -> Site:
    """``blocks.<layer>.hook_resid_post`` at ``position``."""
    return Site(f"blocks.{layer}.hook_resid_post", position=position)


def edit_directions(original: Any, edit: Edit, prompts: TokenBatch, layers: Sequence[int],
                    rel_tol: float = 1e-5) -> dict[int, dict[str, Any]]:
    """Per layer: ``{"direction": Directions | None, "value": original's mean coordinate,
    "norm": ‖mean(edited) − mean(original)‖, "heldout_auc"}`` at the last prompt token.

    ``direction`` is ``None`` where the edit leaves the layer's mean unchanged (norm below
    ``rel_tol`` times the original mean's norm, e.g. layers before a run-time edit's Site).
    """
    sites = [resid_site(layer) for layer in layers]
    fo = extract(original, prompts, sites, progress=False)
    with edit.active(check_fired=False) as m:
        fe = extract(m, prompts, sites, progress=False)
    out: dict[int, dict[str, Any]] = {}
    for layer, s in zip(layers, sites):
        xo, xe = fo[s].values.double(), fe[s].values.double()
        norm = float((xe.mean(0) - xo.mean(0)).norm())
        if norm <= rel_tol * max(float(xo.mean(0).norm()), 1e-12):
            out[layer] = {"direction": None, "value": float("nan"), "norm": norm,
                          "heldout_auc": float("nan")}
            continue
        if len(xo) >= 10:  # held-out evidence needs a few samples per split
            d = mean_diff(xe.float(), xo.float(), site=s, n_permutations=0)
        else:
            d = Directions((xe.mean(0) - xo.mean(0)).float()[None], site=s, method="mean_diff")
        out[layer] = {"direction": d, "value": float(xo.mean(0).float() @ d.direction),
                      "norm": norm, "heldout_auc": float(d.scores.get("heldout_auc", "nan"))}
    return out


def _attack(info: dict[str, Any], layer: int, mode: str) -> Any:
    site = resid_site(layer, "all")
    if mode == "project":
        return Project(info["direction"].basis, site=site, positions="all")
    return Clamp(info["direction"].direction, info["value"], site=site, positions="all")


def ablation_attack(original: Any, edit: Edit, prompts: TokenBatch,
                    metric: Callable[[Any], float], layers: Sequence[int] | None = None,
                    modes: Sequence[str] = MODES) -> pd.DataFrame:
    """The attack of the module docstring on ``edit``.

    Args:
        original: the unedited model (TransformerBridge).
        edit: the edit (:class:`~mechunlearn.robustness.edit.Edit`).
        prompts: the forget prompts as a :class:`~mechunlearn.tokens.TokenBatch`.
        metric: ``metric(model) -> float`` measured with the edit and the attack on, e.g.
            :class:`~mechunlearn.robustness.behaviour.BadRate`.
        layers: blocks to attack (default: all).
        modes: ``"project"`` and/or ``"clamp"``.

    Returns:
        One row per layer plus ``"all"``: ``layer, norm, heldout_auc`` and
        ``<mode>_bad_rate`` per mode (NaN where the edit does not move the layer's mean).

    Raises:
        ConfigError: unknown mode, empty modes or a layer outside the model.
    """
    n = int(original.cfg.n_layers)
    layers = list(range(n)) if layers is None else [int(v) for v in layers]
    if not modes or any(m not in MODES for m in modes):
        raise ConfigError(f"modes must be a non-empty subset of {MODES}, got {list(modes)}.")
    if not layers or any(not 0 <= v < n for v in layers):
        raise ConfigError(f"layers must be blocks 0..{n - 1}, got {layers}.")
    dirs = edit_directions(original, edit, prompts, layers)
    rows = []
    for layer in layers:
        info = dirs[layer]
        row: dict[str, Any] = {"layer": str(layer), "norm": info["norm"],
                               "heldout_auc": info["heldout_auc"]}
        for mode in modes:
            row[f"{mode}_bad_rate"] = float("nan")
            if info["direction"] is not None:
                with edit.active() as m, apply(m, _attack(info, layer, mode)):
                    row[f"{mode}_bad_rate"] = float(metric(m))
        rows.append(row)
    live = [v for v in layers if dirs[v]["direction"] is not None]
    row = {"layer": "all", "norm": float("nan"), "heldout_auc": float("nan")}
    for mode in modes:
        row[f"{mode}_bad_rate"] = float("nan")
        if live:
            attack = Compose(*[_attack(dirs[v], v, mode) for v in live])
            with edit.active() as m, apply(m, attack):
                row[f"{mode}_bad_rate"] = float(metric(m))
    rows.append(row)
    return pd.DataFrame(rows)


def strongest(df: pd.DataFrame, mode: str) -> tuple[float, str]:
    """The highest ``<mode>_bad_rate`` over the rows of :func:`ablation_attack` and where."""
    col = df[f"{mode}_bad_rate"]
    if col.isna().all():
        return float("nan"), ""
    i = col.idxmax()
    return float(col[i]), str(df.layer[i])


__all__ = ["MODES", "ablation_attack", "edit_directions", "resid_site", "strongest"]
