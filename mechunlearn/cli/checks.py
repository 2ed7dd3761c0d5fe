"""Checks on model folders the CLI runs before loading any weights (cheap: configs and
tokenizers only)."""

from __future__ import annotations

from pathlib import Path

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
    """Refuse ``--layers`` outside the model's blocks (read from its config)."""
    n = n_layers(folder)
    if layers is None or n is None:
        return
    bad = [i for i in layers if not 0 <= i < n]
    if bad:
        raise ConfigError(f"--layers {list(bad)} are outside the model's blocks 0..{n - 1} "
                          f"({folder}).")
