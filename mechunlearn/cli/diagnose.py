"""``mechunlearn diagnose``: :func:`mechunlearn.studies.diagnose.diagnose` on a model folder
and JSONL files. Every argument is checked before any model loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from mechunlearn.cli.options import Threads, check_distinct, set_threads
from mechunlearn.errors import ConfigError, EmptyDataError
from mechunlearn.unlearn.loop import UnlearnConfig


def _ints(spec: str, what: str) -> tuple[int, ...] | None:
    if not spec.strip():
        return None
    try:
        return tuple(int(s) for s in spec.split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated integers, got {spec!r}.") from None


def _check_files(model: Path, reference: Path | None, pos: Path | None, neg: Path | None,
                 layers: tuple[int, ...] | None) -> None:
    from mechunlearn.cli.checks import check_layers, check_same_tokenizer
    from mechunlearn.studies.diagnose_checks import check_causal

    check_causal(model, "--model")  # a masked LM (BERT) cannot answer: refuse before loading
    if (pos is None) != (neg is None):
        raise ConfigError("--pos and --neg go together: pass both (X+ and X- samples for "
                          "the direction) or neither (tuned vs reference or the bad cases).")
    if pos is not None and neg is not None:
        check_distinct(pos, neg, "--pos and --neg")
    check_layers(layers, model)
    if reference is not None:
        if reference.expanduser().resolve() == model.expanduser().resolve():
            raise ConfigError(f"--reference {reference} is the same folder as --model: the "
                              "tuned-vs-reference contrast would be zero (the chain stopped at "
                              "its direction step). Pass the model it was tuned from (e.g. the "
                              "SFT model), or drop --reference.")
        check_same_tokenizer(model, reference)


#: the CLI's names for the inputs of the data checks (studies/diagnose_checks.py)
FLAGS = {"train": "--train", "bad": "--bad", "ordinary": "--ordinary", "pos": "--pos",
         "neg": "--neg", "reference": "--reference", "judge": "--judge",
         "n_forget": "--n-forget"}


def _check_data(cfg: Any, train: Path, bad: Path, judge: str, reference: Path | None,
                ordinary: Path | None, pos: Path | None, neg: Path | None) -> None:
    """The checks that read only the JSONL files (and run the judge on the training
    responses): a contrast too small for its held-out folds, unusable ordinary prompts."""
    from mechunlearn.studies.data import load_train
    from mechunlearn.studies.diagnose_checks import check_contrast_size, check_ordinary

    n_train = len(load_train(train))
    if cfg.k > n_train:  # the chain refused it at step 2, after decoding the bad cases
        raise ConfigError(f"--k {cfg.k} is larger than the {n_train} training samples of "
                          f"--train {train}: pass --k {n_train} or fewer.")

    check_contrast_size(train, bad, pos, neg, reference, cfg.n_forget, cfg.heldout_fraction,
                        cfg.seed, FLAGS)
    check_ordinary(train, ordinary, judge, FLAGS)


def _folds_error(e: EmptyDataError, reference: Path | None, pos: Path | None) -> Exception:
    """The direction's fold error (``N groups cannot fill 5 folds; use fewer n_splits``, a
    Python parameter the CLI does not have) re-phrased with the flags that set the number
    of distinct prompts: after the judge, fewer prompts than the up-front count remain."""
    import re

    m = re.search(r"(\d+) groups cannot fill (\d+) folds", str(e))
    if m is None:
        return e
    what = ("the --pos/--neg samples" if pos is not None else "the attribution half of the "
            "--bad prompts that --judge calls bad" if reference is not None else
            "the --n-forget attributed pairs")
    return EmptyDataError(f"The bias direction could not be fitted: {what} hold only "
                          f"{m.group(1)} distinct prompt(s), and its held-out evidence holds "
                          f"whole prompts out over {m.group(2)} folds (at least one each). Raise "
                          "--n-forget, add bad prompts with other texts, or give --reference "
                          "or --pos/--neg.")


def diagnose_cmd(
    ctx: typer.Context,
    model: Path = typer.Option(..., help="Tuned model: Hugging Face folder."),  # noqa: B008
    train: Path = typer.Option(..., help="Training data JSONL: prompt/chosen/rejected "  # noqa: B008
                               "or prompt/response records (optional 'id')."),
    bad: Path = typer.Option(..., help="Bad cases JSONL: 'text' records (prompts; the "  # noqa: B008
                             "model's greedy answers are judged) or prompt/response."),
    judge: str = typer.Option(..., help="What makes a response bad: comma-separated "
                              "keywords (whole words, any case) or 're:<python regex>'."),
    out: Path = typer.Option(Path("diagnose-report"), help="Report folder."),  # noqa: B008
    reference: Path | None = typer.Option(None, help="Reference (e.g. SFT) model "  # noqa: B008
                                          "folder with the same tokenizer: "
                                          "tuned-vs-reference direction, U2A."),
    ordinary: Path | None = typer.Option(None, help="Ordinary prompts JSONL (KL and "  # noqa: B008
                                         "good-behaviour rate; default: clean training "
                                         "prompts)."),
    pos: Path | None = typer.Option(None, help="X+ samples JSONL for the direction "  # noqa: B008
                                    "(with --neg)."),
    neg: Path | None = typer.Option(None, help="X- samples JSONL for the direction "  # noqa: B008
                                    "(with --pos)."),
    truth: Path | None = typer.Option(None, help="Ground-truth training ids, one per "  # noqa: B008
                                      "line: adds AUC / precision@k."),
    layers: str = typer.Option("", help="Comma-separated blocks to sweep (default all)."),
    format: str = typer.Option("raw", help="raw (prompt + response as given) | chat "
                               "(the tokenizer's chat template)."),
    methods: str = typer.Option("project,orthogonalize,unlearn,selective,u2a",
                                help="Comma-separated edits to run, from project, orthogonalize, unlearn, selective, u2a."),
    k: int = typer.Option(8, min=1, help="Convex budget per bad case."),
    n_forget: int = typer.Option(16, min=1, help="Attributed pairs to unlearn."),
    steps: int = typer.Option(UnlearnConfig().steps, min=1,
                              help="Unlearning steps (forget phase, at most)."),
    gradients: bool = typer.Option(True, "--gradients/--no-gradients",
                                   help="Add gradient-similarity methods to the sweep."),
    robustness: bool = typer.Option(True, "--robustness/--no-robustness",
                                    help="Attack every variant (relearning on 8 "
                                    "forget-adjacent training pairs, int8/NF4 quantisation, "
                                    "direction ablation, depth by patching; UDS against "
                                    "--reference): a report section, a second copy of the "
                                    "model in memory; +53 % wall time on the demo."),
    resume: bool = typer.Option(False, "--resume", help="Cache training features in "
                                "OUT.features/ and reuse them on a rerun."),
    threads: Threads = 0,
    overwrite: bool = typer.Option(False, "--overwrite", help="Also replace a different "
                                   "kind of mechunlearn output at --out."),
) -> None:
    """Diagnose your tuned model's bad responses end to end and write a report folder.

    Finds the bad cases (judge), attributes them to training samples over a layer sweep,
    fits a bias direction, edits the model (projection, orthogonalisation, unlearning,
    selective forgetting, U2A), measures each edit on held-out bad prompts and ordinary
    prompts, undoes it, attacks each variant (robustness checks; --no-robustness to skip)
    and writes Markdown + PNG + CSV/JSON. Needs a causal LM (not a masked LM such as BERT).
    """
    from mechunlearn.outputs import check_destination
    from mechunlearn.studies.diagnose import DiagnoseConfig, diagnose

    check_destination(out, "report", overwrite)  # refuse a bad --out before any work
    layer_list = _ints(layers, "--layers")
    from mechunlearn.cli.options import split_list
    from mechunlearn.studies.edits import METHODS

    method_list = split_list(methods, "--methods", METHODS)
    src = ctx.get_parameter_source("steps")  # --steps only matters to the unlearning edits
    if getattr(src, "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP") and not (
            set(method_list) & {"unlearn", "selective", "u2a"}):
        raise ConfigError(f"--steps applies to the unlearning edits (unlearn, selective, u2a) "
                          f"only; --methods {methods} has none: drop --steps.")
    if not method_list:
        raise ConfigError(f"--methods {methods!r} names no edit; give a comma-separated subset "
                          "of project,orthogonalize,unlearn,selective,u2a.")
    if format not in ("raw", "chat"):
        raise ConfigError(f"--format must be raw or chat, got {format!r}.")
    cfg = DiagnoseConfig(layers=layer_list, k=k, n_forget=n_forget, gradients=gradients,
                         methods=method_list, unlearn=UnlearnConfig(steps=steps),
                         robustness=robustness)
    _check_files(model, reference, pos, neg, layer_list)
    _check_data(cfg, train, bad, judge, reference, ordinary, pos, neg)
    set_threads(threads)
    cache = out.with_name(out.name + ".features") if resume else None
    try:
        res = diagnose(model, train, bad, judge=judge, reference=reference, ordinary=ordinary,
                       pos=pos, neg=neg, truth=truth, format=format, config=cfg, cache=cache,
                       say=lambda m: typer.echo(m))
    except EmptyDataError as e:
        raise _folds_error(e, reference, pos) from e
    except KeyboardInterrupt:
        kept = (f"the training features cached so far stay in {cache}; rerun the same command "
                "to reuse them" if cache is not None else "rerun the same command (add "
                "--resume to keep the training features of an interrupted run)")
        typer.echo(f"interrupted: no report was written at --out {out}; {kept}.", err=True)
        raise typer.Exit(130) from None
    path = res.write_report(out, overwrite=overwrite)
    typer.echo(f"[5/5] report written: {path}  (total {res.timings['total']:.0f} s)")
