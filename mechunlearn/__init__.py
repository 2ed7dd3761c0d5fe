"""mechunlearn: attribute, find, and remove what RLHF taught a model, at any hook point."""

from mechunlearn.errors import (
    ArchitectureError,
    ConfigError,
    DTypeError,
    EmptyDataError,
    HookNotFiredError,
    MechUnlearnError,
    NonFiniteError,
    OutputExistsError,
    OutputPathError,
    ShapeError,
    StoreError,
    StoreMismatchError,
    UnknownHookError,
)
from mechunlearn.features import Features, extract, model_fingerprint
from mechunlearn.hooks import add_hooks
from mechunlearn.sites import Site, attn_out, mlp_out, resid, sites
from mechunlearn.tokens import TokenBatch, tokenize
from mechunlearn.versions import versions

__version__ = "0.1.0"

# Heavier parts load on first use (``mu.Project``, ``mu.orthogonalize_``, ...), keeping
# ``import mechunlearn`` cheap and free of side effects.
_LAZY = {
    "Intervention": "mechunlearn.interventions", "Compose": "mechunlearn.interventions",
    "apply": "mechunlearn.interventions",
    "Project": "mechunlearn.interventions", "Steer": "mechunlearn.interventions",
    "Clamp": "mechunlearn.interventions", "Erase": "mechunlearn.interventions",
    "Patch": "mechunlearn.interventions", "Directions": "mechunlearn.directions",
    "ConvexAttributor": "mechunlearn.attribution", "RepSim": "mechunlearn.attribution",
    "Attribution": "mechunlearn.attribution", "orthogonalize_": "mechunlearn.weights",
    "export_hf": "mechunlearn.weights", "doctor": "mechunlearn.conformance.doctor",
    "FeatureStore": "mechunlearn.storage.store", "extract_to_store": "mechunlearn.storage.extract",
    "diagnose": "mechunlearn.studies.diagnose", "DiagnoseConfig": "mechunlearn.studies.diagnose",
}  # (not ``sweep``/``unlearn``: those names are subpackages)


def __getattr__(name: str):  # noqa: ANN202 - module-level lazy attribute (PEP 562)
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mechunlearn' has no attribute {name!r}")

__all__ = [
    "ArchitectureError", "ConfigError", "DTypeError", "EmptyDataError", "Features",
    "HookNotFiredError", "MechUnlearnError", "NonFiniteError",
    "OutputExistsError", "OutputPathError", "ShapeError",
    "Site", "StoreError", "StoreMismatchError", "TokenBatch", "UnknownHookError", "add_hooks",
    "attn_out", "extract", "mlp_out", "model_fingerprint", "resid", "sites", "tokenize",
    "versions", *_LAZY,
]
