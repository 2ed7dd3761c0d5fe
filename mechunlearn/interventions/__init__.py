"""Interventions: edits of activations at a Site, applied through hooks.

| module | idea |
|---|---|
| :mod:`~mechunlearn.interventions.base` | ``Intervention`` (head and position selection), ``Compose``, ``apply`` |
| :mod:`~mechunlearn.interventions.edits` | ``Project``, ``Steer``, ``Clamp``, ``Erase``, ``Patch`` (sources: :class:`HasBasis`, :class:`HasDirection`) |
| :mod:`~mechunlearn.interventions.codec` | the type registry, JSON encoding, ``from_dict`` |
| :mod:`~mechunlearn.interventions.io` | ``to_dict``, ``save`` / ``load`` (JSON + safetensors, atomic) |

Serialisation: ``to_dict()`` gives JSON (tensors inline as lists) and ``from_dict`` rebuilds
any registered type (including ``Compose``); :func:`save` / :func:`load` store a list of
interventions as ``interventions.json`` + ``interventions.safetensors``.
"""

from mechunlearn.interventions.base import Compose, Intervention, apply, register_decoder
from mechunlearn.interventions.codec import REGISTRY, from_dict, register
from mechunlearn.interventions.edits import (
           Clamp,
           Erase,
           HasBasis,
           HasDirection,
           Patch,
           Project,
           Steer,
)
from mechunlearn.interventions.io import load, save, to_dict
from mechunlearn.masks import Positions

__all__ = ["REGISTRY", "Clamp", "Compose", "Erase", "HasBasis", "HasDirection", "Intervention",
           "Patch", "Positions", "Project", "Steer", "apply", "from_dict", "load", "register",
           "register_decoder", "save", "to_dict"]
