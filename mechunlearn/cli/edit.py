"""``mechunlearn edit``: new weights, orthogonalised against saved directions or unlearned."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mechunlearn.cli.options import Model, OverwriteFolder, refuse_unused
from mechunlearn.errors import ConfigError
from mechunlearn.unlearn.loop import UnlearnConfig

_DEFAULT = UnlearnConfig()  # the CLI's defaults are the library's

_HOW = ("orthogonalize", "unlearn")
#: the options only one method reads (the other method refuses them instead of ignoring them)
_ONLY = {"directions": "orthogonalize", "allow_foreign": "orthogonalize", "forget": "unlearn",
         "retain": "unlearn", "objective": "unlearn", "steps": "unlearn",
         "repair_steps": "unlearn"}
FLIP_FORMAT = ("prompt/chosen/rejected records, chosen = the response to unlearn and "
               "rejected = the good response to teach instead")


def _unlearn_items(forget: Path, retain: Path, objective: str) -> tuple[list[Any], list[Any]]:
    """Forget and retain items from JSONL, checked before the model loads.

    Forget: prompt/response records (the response to unlearn) or prompt/chosen/rejected
    records (chosen: to unlearn; rejected: the good answer, which ``flip`` needs). Retain:
    prompt/response records, or prompt/chosen/rejected ones (chosen is kept).
    """
    from mechunlearn.data import read_jsonl
    from mechunlearn.unlearn.objectives import OBJECTIVES

    if objective not in OBJECTIVES:
        raise ConfigError(f"--objective must be one of {sorted(OBJECTIVES)}, got "
                          f"{objective!r}.")
    f, r = read_jsonl(forget), read_jsonl(retain)
    if f.kind == "text" or r.kind == "text":
        raise ConfigError("--forget and --retain need prompt/response (or prompt/chosen/"
                          "rejected) records, not 'text' ones: unlearning acts on responses.")
    if OBJECTIVES[objective].needs_good and f.kind != "triple":
        raise ConfigError(f"--objective {objective} teaches a good response in place of each "
                          f"forgotten one: give --forget as {FLIP_FORMAT}.")
    from mechunlearn.unlearn.data import Item

    # Items carry the records' ids, so warnings and results name them (not list positions)
    forget_items = [Item(i, x[0], x[1], x[2] if f.kind == "triple" else None)
                    for i, x in zip(f.ids, f.items)]
    retain_items = [Item(i, x[0], x[1]) for i, x in zip(r.ids, r.items)]
    return forget_items, retain_items


def edit_cmd(
    ctx: typer.Context,
    how: Annotated[str, typer.Argument(help="orthogonalize | unlearn.")],
    model: Model,
    out: Annotated[Path, typer.Option(help="Folder for the edited model (HF format).")],
    directions: Annotated[Path | None, typer.Option(help="Saved Directions "
                                                    "folder (orthogonalize).")] = None,
    allow_foreign: Annotated[bool, typer.Option(
        "--allow-foreign", help="Orthogonalise even if the directions were fitted on "
        "another model (other weights fingerprint; orthogonalize).")] = False,
    forget: Annotated[Path | None, typer.Option(help="Pairs to unlearn (JSONL): "
                                                "prompt/response, or " + FLIP_FORMAT
                                                + " (needed by flip; unlearn).")] = None,
    retain: Annotated[Path | None, typer.Option(help="Pairs to keep (JSONL): prompt/response "
                                                "or prompt/chosen/rejected (chosen is "
                                                "kept; unlearn).")] = None,
    objective: Annotated[str, typer.Option(help="ga | graddiff | npo | simnpo | rmu | "
                                           "flip (unlearn).")] = "npo",
    steps: Annotated[int, typer.Option(min=1, help="Forget-phase steps; the CLI runs all "
                                       "of them (it has no judge to stop on; the Python API's "
                                       "forget_metric= stops early; unlearn).")]
    = _DEFAULT.steps,
    repair_steps: Annotated[int, typer.Option(min=0, help="Repair steps after the forget "
                                              "phase (retain term; reported "
                                              "separately; unlearn).")] = _DEFAULT.repair_steps,
    overwrite: OverwriteFolder = False,
) -> None:
    """Edit weights: orthogonalise against saved directions, or unlearn a forget set.

    Each option marked (orthogonalize) or (unlearn) is refused by the other method.
    Activation projection needs no new weights: use ``Project`` with ``apply`` in Python.
    Directions fitted on another model are refused (both fingerprints named) unless
    ``--allow-foreign``.
    """
    from mechunlearn.models import load_bridge
    from mechunlearn.outputs import check_destination
    from mechunlearn.weights import export_hf

    if how not in _HOW:
        raise ConfigError(f"edit takes 'orthogonalize' or 'unlearn', got {how!r}.")
    refuse_unused(ctx, _ONLY, how, "edit")
    check_destination(out, "hf-model", overwrite)  # before loading or training anything
    # --out equal to, around or inside --model: refused by cli/guards.py before this runs
    if how == "orthogonalize":
        if directions is None:
            raise ConfigError("edit orthogonalize needs --directions (saved by `directions`).")
        bridge = _orthogonalize(model, directions, allow_foreign)
    else:
        if forget is None or retain is None:
            raise ConfigError("edit unlearn needs --forget and --retain JSONL files.")
        f, r = _unlearn_items(forget, retain, objective)
        if forget.expanduser().resolve() == retain.expanduser().resolve():
            raise ConfigError(f"--forget and --retain name the same file ({forget}): every "
                              "sample would be unlearned and kept at once; pass the pairs to "
                              "keep as --retain.")
        bridge = load_bridge(model)
        _unlearn(bridge, f, r, objective, steps, repair_steps)
    export_hf(bridge, out, overwrite=overwrite)
    typer.echo(f"edited model -> {out}")


def _orthogonalize(model: Path, directions: Path, allow_foreign: bool) -> Any:
    from mechunlearn.directions import Directions
    from mechunlearn.errors import ModelMismatchError
    from mechunlearn.models import load_bridge
    from mechunlearn.provenance import current_fingerprint, strict
    from mechunlearn.weights import orthogonalize_

    dirs = Directions.load(directions)  # a corrupt file fails before the model loads
    bridge = load_bridge(model)
    now = current_fingerprint(bridge)
    if dirs.fingerprint is not None and dirs.fingerprint != now and not allow_foreign:
        raise ModelMismatchError(
            f"--directions {directions} were fitted on a model with fingerprint "
            f"{dirs.fingerprint}, but --model {model} has fingerprint {now} (other weights). "
            "Fit them on this model (`mechunlearn directions`), or pass --allow-foreign to "
            "apply them anyway.")
    with strict(False):  # allowed: warn only
        orthogonalize_(bridge, dirs)
    return bridge


def _unlearn(bridge: Any, forget: list[Any], retain: list[Any], objective: str, steps: int,
             repair_steps: int) -> None:
    from mechunlearn.unlearn.loop import unlearn

    res = unlearn(bridge, forget, retain, objective,
                  UnlearnConfig(steps=steps, repair_steps=repair_steps))
    phase = res.history["phase"] if "phase" in res.history else None
    n_forget = int((phase == "forget").sum()) if phase is not None else res.steps
    n_repair = int((phase == "repair").sum()) if phase is not None else 0
    typer.echo(f"unlearned ({objective}): {n_forget} forget step(s) of at most {steps} "
               f"(stopped: {res.stopped}), then {n_repair} repair step(s); "
               f"{res.seconds:.1f} s")
