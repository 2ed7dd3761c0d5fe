"""The embedded default: a synthetic preference world with planted ground truth and tiny
GPT-2 models trained on it (SFT, SFT+DPO with a planted poison and bias, and a gold model
retrained without the poison).

``load("hard" | "easy" | "tiny" | WorldConfig) -> World``; evaluation helpers live in
:mod:`mechunlearn.toyworld.metrics`. See ``docs/toyworld.md``.
"""

from mechunlearn.toyworld.config import PRESETS, WorldConfig
from mechunlearn.toyworld.data import EvalPrompt, PreferencePair, Truth, WorldData, make_data
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
    good_answer_rate,
    is_bad,
    is_good,
    is_refusal,
    kl,
    measure_rates,
    response_logprob,
)
from mechunlearn.toyworld.metrics import generate as generate_text
from mechunlearn.toyworld.world import World, build, cache_root, check_build, load

__all__ = [
    "PRESETS", "EvalPrompt", "PreferencePair", "Truth", "World", "WorldConfig", "WorldData",
    "bad_response_rate", "bias_rate", "build", "cache_root", "check_build", "encode_pairs",
    "encode_prompts", "format_prompt", "format_response", "generate_text", "good_answer_rate",
    "is_bad", "is_good", "is_refusal", "kl", "load", "make_data", "measure_rates",
    "repsim_auc", "response_logprob",
]

#: old name -> new name (renamed: ``generate`` made data while ``generate_text`` decoded;
#: ``evaluate`` and ``verify`` meant other things elsewhere in the package)
_RENAMED = {"generate": "make_data", "evaluate": "measure_rates", "verify": "check_build"}


def __getattr__(name: str):  # deprecated names, one release
    if name in _RENAMED:
        import warnings

        warnings.warn(f"mechunlearn.toyworld.{name} was renamed {_RENAMED[name]}; the old name "
                      "goes away in the next release.", DeprecationWarning, stacklevel=2)
        return globals()[_RENAMED[name]]
    raise AttributeError(f"module 'mechunlearn.toyworld' has no attribute {name!r}")
