"""What the robustness checks call an edit: one protocol for weight and run-time edits.

An :class:`Edit` is a model that runs plus the run-time interventions applied whenever it
runs. A weight edit (unlearning, :func:`mechunlearn.weights.orthogonalize_`, a retrained
model) is a separate model object with no interventions; a run-time edit
(:class:`~mechunlearn.interventions.Project`, ``Steer``, ``Clamp``, ...) is the original
model with its interventions, applied through :func:`mechunlearn.apply` (hooks stay on
during every check, including the relearning attack's fine-tuning).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from mechunlearn.errors import ConfigError
from mechunlearn.interventions import Intervention, apply

Kind = Literal["weights", "runtime", "reference"]


@dataclass(frozen=True, eq=False)
class Edit:
    """A model that runs (``model``) and the interventions applied while it runs.

    Build with :meth:`weights` (an edited copy of the original, or another model such as a
    retrained one: ``kind="reference"``) or :meth:`runtime` (the original model and
    interventions).

    Raises:
        ConfigError: ``model`` without ``hook_dict`` (not a TransformerBridge), a non-
            :class:`~mechunlearn.hooks.Intervention` in ``interventions``, a run-time edit
            without interventions, or an unknown ``kind``.
    """

    model: Any
    interventions: tuple[Intervention, ...] = ()
    kind: Kind = "weights"

    def __post_init__(self) -> None:
        if not hasattr(self.model, "hook_dict"):
            raise ConfigError(f"Edit.model must be a TransformerBridge (has hook_dict), got "
                              f"{type(self.model).__name__}.")
        ivs = tuple(self.interventions)
        bad = [type(i).__name__ for i in ivs if not isinstance(i, Intervention)]
        if bad:
            raise ConfigError(f"Edit.interventions must be mechunlearn Interventions "
                              f"(Project, Steer, Clamp, ...), got {bad}.")
        if self.kind not in ("weights", "runtime", "reference"):
            raise ConfigError(f"Edit.kind must be 'weights', 'runtime' or 'reference', got "
                              f"{self.kind!r}.")
        if self.kind == "runtime" and not ivs:
            raise ConfigError("A run-time Edit needs at least one intervention.")
        object.__setattr__(self, "interventions", ivs)

    @classmethod
    def weights(cls, model: Any, reference: bool = False) -> Edit:
        """A weight-edited model (a separate object from the original), or with
        ``reference=True`` another model measured alongside (e.g. retrained without the data)."""
        return cls(model, (), "reference" if reference else "weights")

    @classmethod
    def runtime(cls, model: Any, *interventions: Intervention) -> Edit:
        """``interventions`` applied to ``model`` (the original) with :func:`mechunlearn.apply`."""
        return cls(model, tuple(interventions), "runtime")

    @contextmanager
    def active(self, check_fired: bool = True) -> Iterator[Any]:
        """Context in which :attr:`model` behaves as the edited model; yields the model.
        ``check_fired=False`` allows forward passes that stop before an intervention's layer
        (e.g. :func:`mechunlearn.extract` of earlier layers)."""
        if not self.interventions:
            yield self.model
            return
        with apply(self.model, *self.interventions, check_fired=check_fired):
            yield self.model


def check_edits(original: Any, edits: dict[str, Edit]) -> None:
    """Refuse edits the checks cannot compare with ``original``.

    Raises:
        ConfigError: ``edits`` empty or not a dict of :class:`Edit`; a weight edit that *is*
            the original object (edit a separately loaded copy; an in-place edit leaves no
            original to compare with); a model with another ``d_model`` or layer count.
    """
    if not isinstance(edits, dict) or not edits:
        raise ConfigError("edits must be a non-empty dict {name: Edit}.")
    for name, e in edits.items():
        if not isinstance(e, Edit):
            raise ConfigError(f"edits[{name!r}] must be an Edit (Edit.weights(model) or "
                              f"Edit.runtime(model, *interventions)), got {type(e).__name__}.")
        if e.model is original and not e.interventions:
            raise ConfigError(
                f"edits[{name!r}] is the original model itself with no intervention: a weight "
                "edit must be a separately loaded (or copied) model, edited; the original is "
                "needed unedited for the ablation and depth checks.")
        if e.model is not original and e.interventions:
            raise ConfigError(
                f"edits[{name!r}]: a run-time edit must apply its interventions to the "
                "original model object (Edit.runtime(original, ...)).")
        for attr in ("d_model", "n_layers"):
            a, b = getattr(original.cfg, attr), getattr(e.model.cfg, attr)
            if a != b:
                raise ConfigError(f"edits[{name!r}] has {attr}={b}, the original {a}: the "
                                  "checks compare activations layer by layer.")
