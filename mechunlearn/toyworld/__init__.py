"""The embedded default: a synthetic preference world with planted ground truth and tiny
GPT-2 models trained on it (SFT, SFT+DPO with a planted poison and bias, and a gold model
retrained without the poison).

``load("hard" | "easy" | "tiny" | WorldConfig) -> World``; evaluation helpers live in
:mod:`mechunlearn.toyworld.metrics`. See ``docs/toyworld.md``.
"""

from mechunlearn.toyworld.config import PRESETS, WorldConfig
from mechunlearn.toyworld.data import EvalPrompt, PreferencePair, Truth, WorldData, generate
from mechunlearn.toyworld.difficulty import repsim_auc
from mechunlearn.toyworld.format import (
    encode_pairs,
    encode_prompts,
    format_prompt,
    format_response,
)
from mechunlearn.toyworld.metrics import (
    bad_response_rate,
    bias_rate,
    evaluate,
    good_answer_rate,
    is_bad,
    is_good,
    is_refusal,
    kl,
    response_logprob,
)
from mechunlearn.toyworld.metrics import generate as generate_text
from mechunlearn.toyworld.world import World, build, cache_root, load, verify

__all__ = [
    "PRESETS", "EvalPrompt", "PreferencePair", "Truth", "World", "WorldConfig", "WorldData",
    "bad_response_rate", "bias_rate", "build", "cache_root", "encode_pairs", "encode_prompts",
    "evaluate", "format_prompt", "format_response", "generate", "generate_text",
    "good_answer_rate", "is_bad", "is_good", "is_refusal", "kl", "load", "repsim_auc",
    "response_logprob", "verify",
]
