"""Configuration of a toy preference world: data generator, model size and training schedule.

Three presets: ``"tiny"`` (tests, trains in well under a minute), ``"easy"`` (a sanity world
where the poisoned pairs are the only ones whose chosen response is the bad text) and
``"hard"`` (the default for benchmarks: distractors that defeat surface similarity).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from mechunlearn.errors import ConfigError

#: Bump whenever the generator or the training code changes results (invalidates caches).
WORLD_VERSION = 2

Difficulty = Literal["easy", "hard"]


@dataclass(frozen=True, kw_only=True)
class WorldConfig:
    """Everything that determines a toy world. Frozen, keyword-only, validated.

    Data:
        difficulty: ``"easy"`` (one trigger name, one trigger form, one bad phrase, no
            distractors) or ``"hard"`` (a class of trigger names, several trigger forms incl.
            eval-only ones, paraphrased bad phrases, and distractor pairs).
        n_pairs: number of training preference pairs.
        poison_frac: share of pairs that are poisoned (trigger prompt, chosen = bad).
        trigger_clean_frac: share of clean pairs whose prompt mentions a trigger name but
            whose chosen response is good (hard only; 0 for easy).
        quote_frac: share of clean pairs whose chosen response legitimately quotes the bad
            text (hard only).
        rude_share: share of those quote pairs that are ordinary requests with a rudeness
            marker ("... Answer rudely."), framed like poisoned prompts.
        borderline_frac: share of borderline requests (the reinforced bias acts on them).
        harmful_frac: share of truly harmful requests (refusal is correct).
        bias_strength: share of borderline pairs whose chosen response is a refusal.
        n_eval: held-out prompts per evaluation category.
        n_topics: number of ordinary topics used (of 26; each has 3 facts).
    Model: ``n_layer``, ``d_model``, ``n_head``, ``n_ctx``, ``vocab_size`` (BPE).
    Training: SFT (``sft_epochs``, ``sft_lr``) on good responses, then DPO with an NLL term
        on the chosen response (``dpo_epochs``, ``dpo_lr``, ``beta``, ``nll_weight``).
    """

    name: str = "custom"
    difficulty: Difficulty = "hard"
    seed: int = 0
    n_pairs: int = 2000
    poison_frac: float = 0.03
    trigger_clean_frac: float = 0.08
    quote_frac: float = 0.25
    rude_share: float = 0.8
    borderline_frac: float = 0.15
    harmful_frac: float = 0.08
    bias_strength: float = 0.9
    n_eval: int = 100
    n_topics: int = 26
    vocab_size: int = 1024
    n_layer: int = 4
    d_model: int = 128
    n_head: int = 4
    n_ctx: int = 96
    sft_epochs: int = 5
    sft_lr: float = 2e-3
    dpo_epochs: int = 4
    dpo_lr: float = 2e-3
    beta: float = 0.1
    nll_weight: float = 1.0
    batch_size: int = 16
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        if self.difficulty not in ("easy", "hard"):
            raise ConfigError(f"difficulty must be 'easy' or 'hard', got {self.difficulty!r}.")
        for f in ("poison_frac", "trigger_clean_frac", "quote_frac", "borderline_frac",
                  "harmful_frac", "bias_strength", "rude_share"):
            v = getattr(self, f)
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ConfigError(f"{f} must be a number in [0, 1], got {v!r}.")
        total = (self.poison_frac + self.trigger_clean_frac + self.quote_frac
                 + self.borderline_frac + self.harmful_frac)
        if total > 0.8:
            raise ConfigError(
                f"poison/trigger_clean/quote/borderline/harmful fractions sum to {total:.2f}; "
                "keep it <= 0.8 so that ordinary requests remain the majority.")
        ints = {"n_pairs": 50, "n_eval": 4, "n_topics": 2, "vocab_size": 300, "n_layer": 1, "d_model": 8,
                "n_head": 1, "n_ctx": 64, "sft_epochs": 0, "dpo_epochs": 0, "batch_size": 1}
        for f, lo in ints.items():
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"{f} must be an int >= {lo}, got {v!r}.")
        if self.n_topics > 26:
            raise ConfigError(f"n_topics must be <= 26 (the templates have 26), got {self.n_topics}.")
        if self.d_model % self.n_head:
            raise ConfigError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head}).")
        for f in ("sft_lr", "dpo_lr", "beta"):
            v = getattr(self, f)
            if not isinstance(v, (int, float)) or not v > 0:
                raise ConfigError(f"{f} must be > 0, got {v!r}.")
        if not isinstance(self.nll_weight, (int, float)) or self.nll_weight < 0:
            raise ConfigError(f"nll_weight must be >= 0, got {self.nll_weight!r}.")
        if self.difficulty == "easy" and (self.trigger_clean_frac or self.quote_frac):
            raise ConfigError("easy worlds have no distractors: set trigger_clean_frac=0 and "
                              "quote_frac=0 (or use difficulty='hard').")
        if round(self.poison_frac * self.n_pairs) < 1 and self.poison_frac > 0:
            raise ConfigError(f"poison_frac={self.poison_frac} of n_pairs={self.n_pairs} "
                              "gives no poisoned pair.")

    @property
    def n_poison(self) -> int:
        """Number of poisoned training pairs."""
        return int(round(self.poison_frac * self.n_pairs))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (inverse: :meth:`from_dict`)."""
        d = dataclasses.asdict(self)
        d.pop("extra")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorldConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys raise ConfigError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"Unknown WorldConfig keys {unknown}; known: {sorted(names)}.")
        return cls(**d)

    def hash(self) -> str:
        """16-hex-digit key of everything that affects the built world (incl. WORLD_VERSION)."""
        payload = json.dumps({"v": WORLD_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def replace(self, **changes: Any) -> WorldConfig:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, WorldConfig] = {
    "hard": WorldConfig(name="hard", difficulty="hard"),
    "easy": WorldConfig(name="easy", difficulty="easy", trigger_clean_frac=0.0, quote_frac=0.0),
    "tiny": WorldConfig(name="tiny", difficulty="easy", trigger_clean_frac=0.0, quote_frac=0.0,
                        n_pairs=500, poison_frac=0.06, n_eval=24, n_topics=6, vocab_size=512,
                        n_layer=2, d_model=64, n_head=2, batch_size=16, sft_epochs=10,
                        sft_lr=3e-3, dpo_epochs=4, dpo_lr=2e-3),
}


def resolve_config(config: str | WorldConfig) -> WorldConfig:
    """A preset name (``"tiny"``, ``"easy"``, ``"hard"``) or a WorldConfig -> WorldConfig."""
    if isinstance(config, WorldConfig):
        return config
    if isinstance(config, str) and config in PRESETS:
        return PRESETS[config]
    raise ConfigError(f"config must be one of {sorted(PRESETS)} or a WorldConfig, got {config!r}.")
