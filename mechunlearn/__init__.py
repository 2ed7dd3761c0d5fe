"""mechunlearn: attribute, find, and remove what RLHF taught a model, at any hook point."""

from mechunlearn.errors import (
    ArchitectureError,
    ConfigError,
    DTypeError,
    EmptyDataError,
    HookNotFiredError,
    MechUnlearnError,
    NonFiniteError,
    ShapeError,
    StoreError,
    StoreMismatchError,
    UnknownHookError,
)
from mechunlearn.features import Features, extract, model_fingerprint
from mechunlearn.hooks import Compose, Intervention, add_hooks, apply
from mechunlearn.sites import Site, attn_out, mlp_out, resid, sites
from mechunlearn.tokens import TokenBatch, tokenize

__version__ = "0.1.0"

__all__ = [
    "ArchitectureError", "Compose", "ConfigError", "DTypeError", "EmptyDataError", "Features",
    "HookNotFiredError", "Intervention", "MechUnlearnError", "NonFiniteError", "ShapeError",
    "Site", "StoreError", "StoreMismatchError", "TokenBatch", "UnknownHookError", "add_hooks",
    "apply", "attn_out", "extract", "mlp_out", "model_fingerprint", "resid", "sites", "tokenize",
]
