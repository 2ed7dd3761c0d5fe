"""CLI commands for each capability on a user's own model folder and JSONL data.

Registered on :data:`mechunlearn.cli.app` by :func:`register`. Each command reads JSONL
(``text`` or ``prompt``/``response`` records, optional ``id``), works at one hook point,
and writes a file the Python API can read back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from mechunlearn.atomic import atomic_write_bytes
from mechunlearn.errors import ConfigError
from mechunlearn.outputs import check_destination, check_output_file

OVERWRITE_HELP = ("Also replace a different kind of mechunlearn output at --out (a previous "
                  "output of the same kind is always replaced; folders holding files "
                  "mechunlearn did not write are never touched).")


def _features(model: Any, path: Path, site: Any, batch_size: int) -> Any:
    from mechunlearn.datasets import model_inputs, read_jsonl
    from mechunlearn.features import extract

    recs = read_jsonl(path)
    return extract(model, model_inputs(recs, flag=None), site, batch_size=batch_size,
                   ids=recs.ids, progress=True)


def register(app: typer.Typer, friendly: Any, make_site: Any) -> None:
    """Add ``attribute``, ``directions``, ``edit``, ``seal`` and ``sweep`` commands to ``app``."""

    @app.command()
    @friendly
    def attribute(
        model: Path = typer.Option(..., help="Hugging Face model folder."),
        train: Path = typer.Option(..., help="Training samples (JSONL)."),
        query: Path = typer.Option(..., help="Bad (prompt, response) pairs to explain (JSONL)."),
        hook: str = typer.Option(..., help="Hook name, e.g. blocks.1.hook_resid_post."),
        position: str = typer.Option("response_mean", help="last | mean | response_mean | <int>."),
        method: str = typer.Option("convex", help="convex | repsim | random."),
        k: int = typer.Option(16, min=1, help="Samples to select."),
        out: Path = typer.Option(Path("attribution.csv"), help="CSV: query, rank, id, weight."),
        batch_size: int = typer.Option(32, min=1),
        overwrite: bool = typer.Option(False, help="Replace an existing --out file."),
    ) -> None:
        """Attribute each query to the training samples behind it (convex decomposition)."""
        import pandas as pd

        from mechunlearn.attribution import ConvexAttributor, RandomAttributor, RepSim
        from mechunlearn.models import load_bridge

        makers = {"convex": lambda f: ConvexAttributor(f, k=k), "repsim": lambda f: RepSim(f, k=k),
                  "random": lambda f: RandomAttributor(f, k=k)}
        if method not in makers:
            raise ConfigError(f"--method must be one of {sorted(makers)}, got {method!r}.")
        check_output_file(out, overwrite, (".csv",))
        bridge = load_bridge(model)
        site = make_site(hook, position)
        ft, fq = _features(bridge, train, site, batch_size), _features(bridge, query, site, batch_size)
        att = makers[method](ft)
        rows = []
        for qid, a in zip(fq.ids, att.attribute_many(fq)):
            for rank, (i, w) in enumerate(zip(a.ids, a.weights.tolist())):
                rows.append({"query": qid, "rank": rank, "id": i, "weight": w,
                             "residual": a.residual})
        df = pd.DataFrame(rows)
        atomic_write_bytes(out, df.to_csv(index=False).encode())
        typer.echo(df.head(3 * k).to_string(index=False))
        typer.echo(f"-> {out}")

    @app.command()
    @friendly
    def directions(
        model: Path = typer.Option(..., help="Hugging Face model folder."),
        pos: Path = typer.Option(..., help="X+ samples (reinforced behaviour), JSONL."),
        neg: Path = typer.Option(..., help="X- samples (discouraged behaviour), JSONL."),
        hook: str = typer.Option(..., help="Hook name."),
        position: str = typer.Option("mean", help="last | mean | response_mean | <int>."),
        method: str = typer.Option("pca_bias", help="pca_bias | mean_diff | probe | ccs | leace."),
        k: int = typer.Option(1, min=1, help="Directions to keep (pca_bias)."),
        permutations: int = typer.Option(100, min=0, help="Permutation-test rounds."),
        out: Path = typer.Option(Path("directions"), help="Folder to save the Directions "
                                 "(a previous Directions folder there is replaced)."),
        batch_size: int = typer.Option(32, min=1),
        overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    ) -> None:
        """Find the direction separating X+ from X- at a hook point, with held-out evidence."""
        from mechunlearn.directions import FINDERS
        from mechunlearn.models import load_bridge

        if method not in FINDERS:
            raise ConfigError(f"--method must be one of {sorted(FINDERS)}, got {method!r}.")
        check_destination(out, "directions", overwrite)
        bridge = load_bridge(model)
        site = make_site(hook, position)
        fp, fn = _features(bridge, pos, site, batch_size), _features(bridge, neg, site, batch_size)
        kw: dict[str, Any] = {"site": site, "n_permutations": permutations}
        if method == "pca_bias":
            kw["k"] = k
        d = FINDERS[method](fp, fn, **kw)
        d.save(out, overwrite=overwrite)
        sc = d.scores
        typer.echo(f"{method} at {site.key}: held-out AUC {sc.get('heldout_auc', float('nan')):.3f}, "
                   f"permutation p {sc.get('p_value', float('nan')):.3g} -> {out}")

    @app.command()
    @friendly
    def edit(
        how: str = typer.Argument(..., help="orthogonalize | unlearn."),
        model: Path = typer.Option(..., help="Hugging Face model folder."),
        out: Path = typer.Option(..., help="Folder for the edited model (HF format)."),
        directions: Path | None = typer.Option(None, help="Saved Directions (orthogonalize)."),
        forget: Path | None = typer.Option(None, help="Pairs to unlearn (JSONL, unlearn)."),
        retain: Path | None = typer.Option(None, help="Pairs to keep (JSONL, unlearn)."),
        objective: str = typer.Option("npo", help="ga | graddiff | npo | simnpo | rmu | flip."),
        steps: int = typer.Option(100, min=1, help="Unlearning steps."),
        overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    ) -> None:
        """Edit weights: orthogonalise against saved directions, or unlearn a forget set.

        Activation projection needs no new weights: use ``Project`` with ``apply`` in Python.
        """
        from mechunlearn.models import load_bridge
        from mechunlearn.weights import export_hf

        if how not in ("orthogonalize", "unlearn"):
            raise ConfigError(f"edit takes 'orthogonalize' or 'unlearn', got {how!r}.")
        check_destination(out, "hf-model", overwrite)  # before loading or training anything
        if how == "orthogonalize":
            from mechunlearn.directions import Directions
            from mechunlearn.weights import orthogonalize_

            if directions is None:
                raise ConfigError("edit orthogonalize needs --directions (saved by `directions`).")
            dirs = Directions.load(directions)  # a corrupt file fails before the model loads
            bridge = load_bridge(model)
            orthogonalize_(bridge, dirs)
        elif how == "unlearn":
            from mechunlearn.datasets import read_jsonl
            from mechunlearn.unlearn.loop import UnlearnConfig, unlearn

            if forget is None or retain is None:
                raise ConfigError("edit unlearn needs --forget and --retain JSONL files.")
            f, r = read_jsonl(forget), read_jsonl(retain)
            if not (f.is_pairs and r.is_pairs):
                raise ConfigError("--forget and --retain need prompt/response records.")
            bridge = load_bridge(model)
            res = unlearn(bridge, f.items, r.items, objective, UnlearnConfig(steps=steps))
            typer.echo(f"unlearned: {res.steps} steps, stopped: {res.stopped}")
        else:
            raise ConfigError(f"edit takes 'orthogonalize' or 'unlearn', got {how!r}.")
        export_hf(bridge, out, overwrite=overwrite)
        typer.echo(f"edited model -> {out}")

    @app.command()
    @friendly
    def seal(
        data: Path = typer.Option(..., help="Preference pairs: hh-rlhf JSONL(.gz) or "
                                  "prompt/chosen/rejected JSONL."),
        out: Path = typer.Option(Path("seal-report"), help="Report folder."),
        model: Path | None = typer.Option(None, help="Reward-model body (HF folder); default: "
                                          "the packaged all-MiniLM-L6-v2."),
        cache: Path | None = typer.Option(None, help="Feature cache (default ~/.cache/...)."),
        max_length: int = typer.Option(128, min=8, help="Tokens kept (from the end)."),
        boot: int = typer.Option(1000, min=10, help="Bootstrap resamples for imprint CIs."),
        overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    ) -> None:
        """SEAL diagnostics: train a reward model, then resistance, imprint and robustness."""
        from mechunlearn.seal.run import run_seal

        check_destination(out, "seal-report", overwrite)
        body = None
        if model is not None:
            from mechunlearn.models import load_bridge

            body = load_bridge(model)
        run = run_seal(data, out, model=body, cache=cache, max_length=max_length, n_boot=boot,
                       say=lambda m: typer.echo(m), overwrite=overwrite)
        after = run.report.resistance.get("after, test")
        if after is not None:
            typer.echo(f"test agreement {after.agreement:.3f}, resistance {after.resistance:.3f}")
        typer.echo(f"report -> {run.folder}")

    @app.command()
    @friendly
    def sweep(
        model: Path = typer.Option(..., help="Hugging Face model folder."),
        pos: Path = typer.Option(..., help="X+ samples, JSONL."),
        neg: Path = typer.Option(..., help="X- samples, JSONL."),
        kinds: str = typer.Option("resid_post", help="Comma list of resid_pre,resid_mid,"
                                  "resid_post,attn_out,mlp_out."),
        position: str = typer.Option("mean"),
        method: str = typer.Option("mean_diff", help="Direction finder per site."),
        permutations: int = typer.Option(20, min=0),
        out: Path = typer.Option(Path("sweep.csv"), help="CSV, one row per site."),
        plot: Path | None = typer.Option(None, help="Also save a PNG of held-out AUC by layer."),
        overwrite: bool = typer.Option(False, help="Replace existing --out / --plot files."),
    ) -> None:
        """Held-out separation of X+ vs X- at every layer and hook kind (one forward pass)."""
        from mechunlearn.datasets import read_jsonl
        from mechunlearn.directions import FINDERS
        from mechunlearn.models import load_bridge
        from mechunlearn.sites import sites as all_sites
        from mechunlearn.sweep import sweep as run_sweep

        if method not in FINDERS:
            raise ConfigError(f"--method must be one of {sorted(FINDERS)}, got {method!r}.")
        check_output_file(out, overwrite, (".csv",))
        if plot is not None:
            check_output_file(plot, overwrite, (".png", ".pdf", ".svg"))
        bridge = load_bridge(model)
        pos_t = int(position) if position.lstrip("-").isdigit() else position
        site_list = all_sites(bridge, tuple(k.strip() for k in kinds.split(",")), pos_t)
        p, n = read_jsonl(pos), read_jsonl(neg)

        def fn(site: Any, feats: dict[str, Any]) -> dict[str, Any]:
            d = FINDERS[method](feats["pos"], feats["neg"], site=site,
                                n_permutations=permutations)
            return {k: d.scores.get(k) for k in ("heldout_auc", "p_value", "null_auc_q05",
                                                 "null_auc_q95")}

        df = run_sweep(bridge, site_list, fn, {"pos": p.items, "neg": n.items})
        atomic_write_bytes(out, df.to_csv(index=False).encode())
        if plot is not None:
            from mechunlearn.plots import plot_layers

            plot_layers(df, "heldout_auc", hue="kind" if "kind" in df.columns else None,
                        chance=0.5, save=plot)
        typer.echo(df.to_string(index=False))
        typer.echo(f"-> {out}")
