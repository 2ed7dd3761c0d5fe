"""``mechunlearn directions`` and ``mechunlearn sweep``: where do X+ and X- separate?"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mechunlearn.cli.options import (
    BatchSize,
    Hook,
    Model,
    Neg,
    OverwriteFile,
    OverwriteFolder,
    Permutations,
    Pos,
    Position,
    check_distinct,
    check_method,
    features,
    make_site,
    position_value,
)
from mechunlearn.errors import ConfigError


def _check_pos_neg(pos: Path, neg: Path) -> list[Any]:
    """Both files readable as texts or pairs, not the same file, and not the same samples in
    two files (in any order): with nothing to separate, every method would return noise with
    at most a warning (before any work). Returns both files' Records."""
    from collections import Counter

    from mechunlearn.cli.checks import check_not_triples
    from mechunlearn.data import model_inputs, read_jsonl

    check_distinct(pos, neg, "--pos and --neg")
    recs = [read_jsonl(p) for p in (pos, neg)]
    for r, path, flag in zip(recs, (pos, neg), ("--pos", "--neg")):
        check_not_triples(r, path, flag)
    items = [model_inputs(r, None, None) for r in recs]
    from mechunlearn.directions import N_SPLITS as n_min  # each file fills every fold
    for its, path, flag in zip(items, (pos, neg), ("--pos", "--neg")):
        if len(its) < n_min:
            raise ConfigError(f"{flag} {path} holds {len(its)} sample(s); the held-out evidence "
                              f"splits each of --pos and --neg into {n_min} folds, so each "
                              f"needs at least {n_min} samples: add samples to {path}.")
    if Counter(map(repr, items[0])) == Counter(map(repr, items[1])):
        raise ConfigError(f"--pos {pos} and --neg {neg} hold the same {len(items[0])} "
                          "samples (in some order): there is nothing to separate, and any "
                          "direction found would be noise; pass X+ and X- that differ.")
    return recs


def _check_positions(bridge: Any, recs: list[Any], position: int | str, pos: Path,
                     neg: Path) -> None:
    """An integer --position every sample of --pos and --neg has (before any forward pass)."""
    from mechunlearn.cli.checks import check_position

    for r, path, flag in zip(recs, (pos, neg), ("--pos", "--neg")):
        check_position(bridge, r.items, r.ids, position, path, data_flag=flag)


def directions_cmd(
    model: Model,
    pos: Pos,
    neg: Neg,
    hook: Hook,
    position: Position = "mean",
    method: Annotated[str, typer.Option(help="pca_bias | mean_diff | probe | ccs | leace.")]
    = "pca_bias",
    k: Annotated[int, typer.Option(min=1, help="Directions to keep (pca_bias only; at most "
                                   "the feature dimension).")] = 1,
    permutations: Permutations = 100,
    out: Annotated[Path, typer.Option(help="Folder to save the Directions (a previous "
                                      "Directions folder there is replaced).")]
    = Path("directions"),
    batch_size: BatchSize = 32,
    overwrite: OverwriteFolder = False,
) -> None:
    """Find the direction separating X+ from X- at a hook point, with held-out evidence.

    ``--k`` larger than the hook's feature dimension (or than the principal components
    with variance) is refused, not silently cut: asking for more directions than exist is
    a mistake in the request, and a shorter basis than asked for would change what
    ``edit orthogonalize`` removes. Methods: docs/directions.md.
    """
    from mechunlearn.directions import FINDERS
    from mechunlearn.models import load_bridge
    from mechunlearn.outputs import check_destination

    check_method(method, FINDERS)
    if k != 1 and method != "pca_bias":
        raise ConfigError(f"--k {k} applies to --method pca_bias only ({method} finds one "
                          "direction); drop --k or use --method pca_bias.")
    check_destination(out, "directions", overwrite)
    site = make_site(hook, position)
    recs = _check_pos_neg(pos, neg)
    bridge = load_bridge(model)
    site.resolve(bridge)
    _check_positions(bridge, recs, site.position, pos, neg)
    fp, fn = features(bridge, pos, site, batch_size), features(bridge, neg, site, batch_size)
    if k > fp.d:
        raise ConfigError(f"--k {k} is larger than the feature dimension {fp.d} at "
                          f"{site.key}: pass --k {fp.d} or fewer.")
    kw: dict[str, Any] = {"site": site, "n_permutations": permutations}
    if method == "pca_bias":
        kw["k"] = k
    d = FINDERS[method](fp, fn, **kw)
    if method == "pca_bias" and len(d.basis) < k:
        raise ConfigError(f"--k {k}: the features at {site.key} have only {len(d.basis)} "
                          f"principal component(s) with variance (dimension {fp.d}, "
                          f"{len(fp) + len(fn)} samples); pass --k {len(d.basis)} or add "
                          "samples.")
    d.save(out, overwrite=overwrite)
    sc = d.scores
    p = (f"permutation p {sc.get('p_value', float('nan')):.3g}" if permutations else
         "no permutation test (--permutations 0)")
    typer.echo(f"{method} at {site.key}: held-out AUC {sc.get('heldout_auc', float('nan')):.3f}, "
               f"{p} -> {out}")


def sweep_cmd(
    model: Model,
    pos: Pos,
    neg: Neg,
    kinds: Annotated[str, typer.Option(help="Comma list of resid_pre,resid_mid,resid_post,"
                                       "attn_out,mlp_out.")] = "resid_post",
    position: Position = "mean",
    method: Annotated[str, typer.Option(help="Direction finder per site: pca_bias | mean_diff | probe | ccs | leace.")] = "mean_diff",
    permutations: Permutations = 20,
    out: Annotated[Path, typer.Option(help="CSV, one row per site (plus "
                                      "<out>.mechunlearn.json with the versions).")]
    = Path("sweep.csv"),
    plot: Annotated[Path | None, typer.Option(help="Also save a PNG of held-out AUC by "
                                              "layer.")] = None,
    overwrite: OverwriteFile = False,
) -> None:
    """Held-out separation of X+ vs X- at every layer and hook kind (one forward pass)."""
    from mechunlearn.cli.options import split_list
    from mechunlearn.directions import FINDERS
    from mechunlearn.models import load_bridge
    from mechunlearn.outputs import check_output_file, write_output_file, write_sidecar
    from mechunlearn.sites import SITE_KINDS
    from mechunlearn.sites import sites as all_sites
    from mechunlearn.sweep import sweep as run_sweep

    check_method(method, FINDERS)
    kind_list = split_list(kinds, "--kinds", SITE_KINDS)  # unknown or repeated: refused
    if not kind_list:
        raise ConfigError(f"--kinds {kinds!r} names no site kind; choose from "
                          f"{list(SITE_KINDS)}.")
    check_output_file(out, overwrite, (".csv",))
    if plot is not None:
        check_output_file(plot, overwrite, (".png", ".pdf", ".svg"))
    p, n = _check_pos_neg(pos, neg)
    where = position_value(position)  # a bad --position fails before loading
    bridge = load_bridge(model)
    _check_positions(bridge, [p, n], where, pos, neg)
    site_list = all_sites(bridge, kind_list, where)

    def fn(site: Any, feats: dict[str, Any]) -> dict[str, Any]:
        d = FINDERS[method](feats["pos"], feats["neg"], site=site,
                            n_permutations=permutations)
        return {k: d.scores.get(k) for k in ("heldout_auc", "p_value", "null_auc_q05",
                                             "null_auc_q95")}

    df = run_sweep(bridge, site_list, fn, {"pos": p.items, "neg": n.items})
    meta = {"method": method, "kinds": list(kind_list), "position": position,
            "pos": str(pos), "neg": str(neg)}
    write_output_file(out, df.to_csv(index=False).encode(), "sweep-csv", meta)
    if plot is not None:
        from mechunlearn.plots import plot_layers

        plot_layers(df, "heldout_auc", hue="kind" if "kind" in df.columns else None,
                    chance=0.5, save=plot)
        write_sidecar(plot, "sweep-plot", meta)
    typer.echo(df.to_string(index=False))
    typer.echo(f"-> {out}")
