"""Checks the CLI runs before the expensive work: on model folders before loading any weights
(configs and tokenizers only), on output folders, and on token positions before any forward
pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mechunlearn.errors import ConfigError

#: strings whose token ids two tokenizers must agree on (words, digits, punctuation, unicode)
PROBES = ("The quick brown fox jumps over the lazy dog.", " 12345 67",
          "Hello, world! Don't.", "naïve café — 東京")


def _tokenizer(folder: Path, flag: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{flag} {folder}: cannot load its tokenizer ({e}).") from e


def check_same_tokenizer(a: Path, b: Path, flag_a: str = "--model",
                         flag_b: str = "--reference") -> None:
    """Refuse two model folders whose tokenizers differ (vocabulary size or the ids of a few
    probe strings): comparing the two models token by token would be meaningless.

    Raises:
        ConfigError: naming both folders and the first difference found.
    """
    ta, tb = _tokenizer(a, flag_a), _tokenizer(b, flag_b)
    if len(ta) != len(tb):
        raise ConfigError(f"{flag_a} {a} and {flag_b} {b} have different tokenizers "
                          f"(vocabulary {len(ta)} vs {len(tb)} tokens); the reference must "
                          "share the tuned model's tokenizer (e.g. the SFT model it was "
                          "tuned from).")
    for s in PROBES:
        ia, ib = ta(s)["input_ids"], tb(s)["input_ids"]
        if ia != ib:
            raise ConfigError(f"{flag_a} {a} and {flag_b} {b} have different tokenizers: "
                              f"{s!r} is {ia[:8]} vs {ib[:8]}; the reference must share the "
                              "tuned model's tokenizer.")


def n_layers(folder: Path, flag: str = "--model") -> int | None:
    """The number of blocks in a model folder's ``config.json`` (``None``: unknown)."""
    import json

    try:
        cfg = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None  # load_bridge names the problem when it loads the folder
    for key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        if isinstance(cfg.get(key), int):
            return int(cfg[key])
    return None


def check_layers(layers: tuple[int, ...] | None, folder: Path) -> None:
    """Refuse ``--layers`` listing a block twice or outside the model's blocks (read from
    its config)."""
    from mechunlearn.cli.options import check_no_repeats

    if layers is not None:
        check_no_repeats(layers, "--layers")
    n = n_layers(folder)
    if layers is None or n is None:
        return
    bad = [i for i in layers if not 0 <= i < n]
    if bad:
        raise ConfigError(f"--layers {list(bad)} are outside the model's blocks 0..{n - 1} "
                          f"({folder}).")


def check_new_kind(out: Path, kind: str, legacy: Any = None, flag: str = "--out") -> Path:
    """:func:`mechunlearn.outputs.check_destination` for a command that has no
    ``--overwrite``: a folder holding another kind of mechunlearn output is refused with a
    message naming what this command can do (the library's message suggests
    ``--overwrite``). Returns the absolute path.

    Raises:
        OutputExistsError, OutputPathError: as ``check_destination``.
    """
    from mechunlearn.errors import OutputExistsError
    from mechunlearn.outputs import check_destination, read_manifest

    try:
        return check_destination(out, kind, False, legacy)
    except OutputExistsError as e:
        if "--overwrite" not in str(e):
            raise
        found = (read_manifest(Path(out).expanduser()) or {}).get("kind", "another")
        raise OutputExistsError(
            f"{flag} {out} holds a previous mechunlearn {found!r} output, not a {kind!r}, and "
            f"this command never replaces another kind of output: pick another {flag} (or "
            f"delete {out} yourself if you no longer need it).") from e


def real_lengths(model: Any, items: Any, chunk: int = 1024) -> Any:
    """Real tokens per sample as the pooling counts them (``[n]`` int64), tokenized in chunks
    of ``chunk`` samples (memory bounded by one chunk's padded batch)."""
    import torch

    from mechunlearn.tokens import as_token_batch

    parts = [as_token_batch(model, items[i:i + chunk]).attention_mask.sum(1)
             for i in range(0, len(items), chunk)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def check_not_triples(recs: Any, path: Path, flag: str) -> None:
    """Refuse prompt/chosen/rejected records for an option that reads texts or
    prompt/response pairs only, naming the option and the file (the library's message names
    neither)."""
    if getattr(recs, "kind", None) == "triple":
        raise ConfigError(
            f"{flag} {path} holds prompt/chosen/rejected records, but {flag} reads 'text' or "
            "'prompt'+'response' records: write the responses you mean as prompt/response "
            "records.")


def _empty(item: Any) -> bool:
    """A text, or the response of a (prompt, response) pair, that is blank."""
    text = item[1] if isinstance(item, (tuple, list)) and len(item) == 2 else item
    return isinstance(text, str) and not text.strip()


def check_samples(model: Any, items: Any, ids: Any, data: Path,
                  data_flag: str = "--data") -> None:
    """Refuse, before any forward pass or output, a blank sample or one longer than the
    model's context, naming the file, the sample's id and what to do (the library's own
    errors, raised mid-run, give an index within a batch and a Python-only hint).

    Raises:
        EmptyDataError: a blank ``text`` (or blank ``response``).
        ShapeError: a sample with more real tokens than the model's context length.
    """
    from mechunlearn.errors import EmptyDataError, ShapeError
    from mechunlearn.tokens import context_length

    blank = [i for i, it in enumerate(items) if _empty(it)]
    if blank:
        raise EmptyDataError(
            f"{data_flag} {data}: {len(blank)} sample(s) are blank (the first: id "
            f"{str(ids[blank[0]])!r}, record {blank[0] + 1}); remove them or give them text.")
    n_real, n_ctx = real_lengths(model, items), context_length(model)
    long = (n_real > n_ctx).nonzero().flatten().tolist()
    if long:
        i = int(long[0])
        raise ShapeError(
            f"{data_flag} {data}: {len(long)} sample(s) have more tokens than the model's "
            f"context ({n_ctx}); the first: id {str(ids[i])!r} (record {i + 1}, "
            f"{int(n_real[i])} tokens). Shorten or split those records (the command line "
            "does not truncate).")


def check_position(model: Any, items: Any, ids: Any, position: int | str, data: Path,
                   flag: str = "--position", data_flag: str = "--data") -> None:
    """Refuse samples the model cannot read (:func:`check_samples`: blank, or longer than
    its context) and an integer ``--position`` that some sample of the data does not have,
    before any forward pass, naming the shortest sample and the positions every sample has.

    ``items``: the samples as the command feeds them to ``model`` (texts or pairs); ``ids``:
    their ids. A str position (``last``, ``mean``, ...) is not checked here.

    Raises:
        ConfigError: ``response_mean`` on 'text' records (they have no response).
        EmptyDataError, ShapeError: as :func:`check_samples`.
        ConfigError: e.g. ``--position 5 is out of range for 4 of the 8 samples of --data
            x.jsonl: the shortest (id '0') has 1 real token(s), the longest 8. Every sample
            has positions 0..0 (or -1..-1 from the end); ...``.
    """
    if len(items) == 0:
        return
    if position == "response_mean" and isinstance(items[0], str):
        raise ConfigError(
            f"{flag} response_mean averages over each sample's response tokens, but "
            f"{data_flag} {data} holds 'text' records (no response, so no response mask): give "
            "'prompt'+'response' "
            f"records, or use {flag} mean.")
    check_samples(model, items, ids, data, data_flag)
    if isinstance(position, bool) or not isinstance(position, int):
        return
    n_real = real_lengths(model, items)
    bad = (n_real <= position) if position >= 0 else (n_real < -position)
    if not bool(bad.any()):
        return
    short = int(n_real.argmin())
    lo, hi = int(n_real.min()), int(n_real.max())
    raise ConfigError(
        f"{flag} {position} is out of range for {int(bad.sum())} of the {len(n_real)} samples "
        f"of {data_flag} {data}: the shortest (id {str(ids[short])!r}) has {lo} real "
        f"token(s), the longest {hi}. Every sample has positions 0..{lo - 1} (or -{lo}..-1 "
        "from the end); use one of those, or last / mean.")


def renamed(e: Exception, pairs: Any) -> Exception:
    """``e`` re-phrased for the command line: each ``(old, new)`` text of ``pairs`` replaced
    in its message (e.g. the library's ``--out`` by ``distributed merge``'s ``DST``), as the
    same exception type (:class:`ConfigError` if that type cannot be built from a message).
    The library's own text is unchanged for Python users."""
    msg = str(e)
    for old, new in pairs:
        msg = msg.replace(old, new)
    if msg == str(e):
        return e
    try:
        return type(e)(msg)
    except TypeError:  # an error class whose constructor takes other arguments
        return ConfigError(msg)
