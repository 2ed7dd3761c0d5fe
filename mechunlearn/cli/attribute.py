"""``mechunlearn attribute``: which training samples is each bad response made of?"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mechunlearn.cli.options import (
    BatchSize,
    Hook,
    Model,
    OverwriteFile,
    Position,
    check_method,
    features,
    make_site,
)


def _methods() -> tuple[str, ...]:
    """Methods that take plain features: ``mechunlearn.attribution.methods("features")``."""
    from mechunlearn.attribution import methods

    return methods("features")


def _attributor(method: str, train: Any, k: int) -> Any:
    from mechunlearn.attribution import make

    return make(method, train, k=k)


def _first_keys(path: Path) -> list[str]:
    """The keys of the first record of a JSONL file (already read without error)."""
    from mechunlearn.data import jsonl_lines

    for _, rec in jsonl_lines(path):
        return sorted(rec) if isinstance(rec, dict) else []
    return []


def _check_field(ctx: Any, field: str, kind: str, train: Path) -> None:
    """Refuse a --field the user gave for --train records that have no chosen/rejected (it
    would be ignored: each record's one response would be read instead)."""
    from mechunlearn.errors import DataFileError

    src = ctx.get_parameter_source("field")
    if kind == "triple" or getattr(src, "name", "DEFAULT") in ("DEFAULT", "DEFAULT_MAP"):
        return
    what = "'text'" if kind == "text" else "'prompt'+'response'"
    raise DataFileError(f"--field {field}: --train {train} holds {what} records (keys "
                        f"{_first_keys(train)}), which have no {field!r} key; --field picks "
                        "the response of prompt/chosen/rejected records. Drop --field (each "
                        "record is read as it is), or pass preference records.")


def attribute_cmd(
    ctx: typer.Context,
    model: Model,
    train: Annotated[Path, typer.Option(help="Training samples (JSONL): 'text', "
                                        "'prompt'+'response', or preference records "
                                        "'prompt'+'chosen'+'rejected' (read as prompt + the "
                                        "response --field names: chosen by default, the "
                                        "answer tuning reinforced).")],
    query: Annotated[Path, typer.Option(help="Bad (prompt, response) pairs to explain "
                                        "(JSONL).")],
    hook: Hook,
    position: Position = "response_mean",
    method: Annotated[str, typer.Option(help="A feature-space method of mechunlearn.attribution.METHODS: convex, convex_local, repsim, repsim_centered, repsim_whitened, random.")] = "convex",
    k: Annotated[int, typer.Option(min=1, help="Samples to select per query (at most the "
                                   "number of training samples).")] = 16,
    field: Annotated[str, typer.Option(help="For preference --train records: chosen | "
                                       "rejected.")] = "chosen",
    out: Annotated[Path, typer.Option(help="CSV: query, rank, id, score, and for the convex "
                                      "methods also weight and residual (plus "
                                      "<out>.mechunlearn.json with the versions).")]
    = Path("attribution.csv"),
    batch_size: BatchSize = 32,
    overwrite: OverwriteFile = False,
) -> None:
    """Attribute each query to the training samples behind it (convex decomposition).

    Method: Liu et al., "Explainable reinforcement learning from human feedback to improve
    alignment" (arXiv:2512.13837); RepSim and random are the baselines. The CSV has one row
    per (query, selected sample): its ``score`` (the method's; higher = more responsible) and,
    for the convex methods only, its convex ``weight`` and the query's ``residual``
    (score-based methods have no weights: they select the top ``k`` scores). For the
    preference-contrast view of prompt/chosen/rejected data use
    ``mechunlearn.attribution.explain_preferences`` (Python) or ``mechunlearn diagnose``.
    """
    import pandas as pd

    from mechunlearn.data import model_inputs, read_jsonl
    from mechunlearn.errors import ConfigError
    from mechunlearn.models import load_bridge
    from mechunlearn.outputs import check_output_file, write_output_file

    check_method(method, dict.fromkeys(_methods()))
    if field not in ("chosen", "rejected"):
        raise ConfigError(f"--field must be chosen or rejected, got {field!r}.")
    check_output_file(out, overwrite, (".csv",))
    site = make_site(hook, position)
    recs = read_jsonl(train)  # read and check both files before loading the model
    _check_field(ctx, field, recs.kind, train)
    items = model_inputs(recs, field if recs.kind == "triple" else None, "--field")
    if k > len(items):
        raise ConfigError(f"--k {k} is larger than the {len(items)} training samples in "
                          f"{train}; pass --k {len(items)} or fewer.")
    qrecs = read_jsonl(query)
    from mechunlearn.cli.checks import check_not_triples

    check_not_triples(qrecs, query, "--query")
    model_inputs(qrecs, None, None)
    bridge = load_bridge(model)
    from mechunlearn.cli.checks import check_position

    check_position(bridge, items, recs.ids, site.position, train, data_flag="--train")
    check_position(bridge, qrecs.items, qrecs.ids, site.position, query, data_flag="--query")
    from mechunlearn.features import extract

    ft = extract(bridge, items, site, batch_size=batch_size, ids=recs.ids, progress=True)
    fq = features(bridge, query, site, batch_size)
    from mechunlearn.attribution import METHODS

    att = _attributor(method, ft, k)
    weighted = METHODS[method].weighted
    rows = []
    for qid, a in zip(fq.ids, att.attribute_many(fq)):
        for rank, (j, i) in enumerate(zip(a.indices, a.ids)):
            row = {"query": qid, "rank": rank, "id": i, "score": float(a.scores[j])}
            if weighted:
                row |= {"weight": float(a.weights[rank]), "residual": a.residual}
            rows.append(row)
    df = pd.DataFrame(rows)
    write_output_file(out, df.to_csv(index=False).encode(), "attribution-csv",
                      {"method": method, "site": site.key, "k": k, "train": str(train),
                       "query": str(query), "columns": list(df.columns)})
    typer.echo(df.head(3 * k).to_string(index=False))
    typer.echo(f"-> {out}")
