"""``RewardModel``: a TransformerBridge body plus a scalar linear head reading one Site.

Two ways to train it with the Bradley-Terry loss on (chosen, rejected) pairs:

* **head only** (:meth:`RewardModel.fit` / :meth:`RewardModel.from_features`): the body is
  frozen; features are extracted once (or read from a FeatureStore) and a ridge-regularised
  linear head is fitted by damped Newton steps. Fast and deterministic.
* **fine-tuning** (:meth:`RewardModel.finetune_`): gradients flow through the last ``n``
  blocks up to the Site. This edits the body's weights **in place** (hence the ``_``).

The default Site is the last block's ``hook_resid_post``: at the last real token for causal
models (the only token that has seen the whole response), and mean-pooled over the *response*
tokens for bidirectional encoders like all-MiniLM-L6-v2 (its last token is ``[SEP]``; on the
hh-rlhf sample response-mean pooling beat mean over all tokens and ``[CLS]`` at every layer in
cross-validation; see ``docs/seal.md`` for the measured comparison).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from mechunlearn.errors import ConfigError, ShapeError
from mechunlearn.features import Features, model_fingerprint
from mechunlearn.interventions import Intervention, apply
from mechunlearn.seal.data import PreferencePair
from mechunlearn.seal.errors import BodyMismatchError, SiteMismatchError
from mechunlearn.seal.featurize import (
    cached_item_features,
    content_ids,
    ids_tag,
    item_features,
    pair_features,
)
from mechunlearn.seal.head import LinearHead, fit_head
from mechunlearn.sites import Site


def default_site(body: Any) -> Site:
    """Last block's ``hook_resid_post``: ``"response_mean"`` for bidirectional bodies, else
    ``"last"``."""
    n = int(body.cfg.n_layers)
    bidir = getattr(body.cfg, "attention_dir", "causal") == "bidirectional"
    return Site(f"blocks.{n - 1}.hook_resid_post", "response_mean" if bidir else "last")


@dataclass(frozen=True)
class RewardModelConfig:
    """How a reward model reads its body (saved as ``config.json``)."""

    site: Site
    fingerprint: str
    max_length: int | None = 128
    sep: str = " "
    mode: Literal["head", "finetune"] = "head"
    tuned_blocks: tuple[int, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"site": self.site.to_dict(), "fingerprint": self.fingerprint,
                "max_length": self.max_length, "sep": self.sep, "mode": self.mode,
                "tuned_blocks": list(self.tuned_blocks), "info": self.info}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RewardModelConfig:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(Site.from_dict(d["site"]), d["fingerprint"], d.get("max_length", 128),
                       d.get("sep", " "), d.get("mode", "head"),
                       tuple(d.get("tuned_blocks", ())), dict(d.get("info", {})))
        except (KeyError, TypeError) as e:
            raise ConfigError(f"Not a reward-model config: {d!r} ({e}).") from e


class RewardModel:
    """Scalar reward ``r(prompt, response) = head(pool(body activations at site))``.

    Args:
        head: the fitted :class:`~mechunlearn.seal.head.LinearHead`.
        config: Site, body fingerprint and tokenization settings.
        body: the TransformerBridge (``None`` for a head that only scores given features).
    """

    def __init__(self, head: LinearHead, config: RewardModelConfig, body: Any = None) -> None:
        self.head = head
        self.config = config
        self.body = body

    @property
    def site(self) -> Site:
        """Site the head reads."""
        return self.config.site

    # ---------------------------------------------------------------- training
    @classmethod
    def from_features(cls, chosen: Features | Any, rejected: Features | Any, body: Any = None,
                      l2: float | str = "auto", seed: int = 0, max_length: int | None = 128,
                      sep: str = " ") -> RewardModel:
        """Head-only training on precomputed features (e.g. from a FeatureStore).

        ``chosen``/``rejected``: :class:`Features` ``[n, d]`` (or FeatureStores, loaded) of
        the same pairs, same Site.
        """
        from mechunlearn.storage.store import FeatureStore

        chosen = chosen.load() if isinstance(chosen, FeatureStore) else chosen
        rejected = rejected.load() if isinstance(rejected, FeatureStore) else rejected
        for name, f in (("chosen", chosen), ("rejected", rejected)):
            if not isinstance(f, Features):
                raise ConfigError(f"{name} must be Features, got {type(f).__name__}.")
        if chosen.site != rejected.site:
            raise SiteMismatchError(f"chosen features are at {chosen.site.key} but rejected at "
                                    f"{rejected.site.key}.")
        if chosen.fingerprint != rejected.fingerprint:
            raise BodyMismatchError("chosen and rejected features come from different models "
                                    f"({chosen.fingerprint} vs {rejected.fingerprint}).")
        head, info = fit_head(chosen.values, rejected.values, l2=l2, seed=seed)
        cfg = RewardModelConfig(chosen.site, chosen.fingerprint, max_length, sep, "head",
                                info=info)
        return cls(head, cfg, body)

    @classmethod
    def fit(cls, body: Any, pairs: Sequence[PreferencePair], site: Site | None = None,
            l2: float | str = "auto", seed: int = 0, max_length: int | None = 128,
            sep: str = " ", batch_size: int = 32,
            cache_dir: str | os.PathLike[str] | None = None) -> RewardModel:
        """Head-only training: extract features of ``pairs`` at ``site`` and fit the head."""
        site = default_site(body) if site is None else site.resolve(body)
        f = pair_features(body, pairs, site, max_length, batch_size, sep, cache_dir)
        return cls.from_features(f["chosen"][site], f["rejected"][site], body, l2, seed,
                                 max_length, sep)

    # ----------------------------------------------------------------- scoring
    def check_features(self, features: Features) -> None:
        """Raise a typed error unless ``features`` were read at this RM's Site and body."""
        if not isinstance(features, Features):
            raise ConfigError(f"Expected Features, got {type(features).__name__}.")
        if features.site != self.site:
            raise SiteMismatchError(
                f"Features were read at {features.site.key} but this reward model's head reads "
                f"{self.site.key}; extract features at the RM's site.")
        if features.fingerprint != self.config.fingerprint:
            raise BodyMismatchError(
                f"Features come from a model with fingerprint {features.fingerprint}, the "
                f"reward model's body has {self.config.fingerprint}.")
        if features.d != self.head.d:
            raise ShapeError(f"Features have d={features.d}, the head expects {self.head.d}.")

    def score_features(self, features: Features) -> Tensor:
        """Scores ``[n]`` (float64) of precomputed features at this RM's Site."""
        self.check_features(features)
        return self.head(features.values)

    def _need_body(self) -> Any:
        if self.body is None:
            raise ConfigError("This RewardModel has no body; pass body= to load()/fit() to "
                              "score text.")
        return self.body

    def score(self, items: Sequence[tuple[str, str]], batch_size: int = 32,
              interventions: Sequence[Intervention] = (), progress: bool | None = None,
              cache_dir: str | os.PathLike[str] | None = None) -> Tensor:
        """Scores ``[n]`` of ``(prompt, response)`` items (``response`` without ``sep``).

        ``interventions`` are applied to the body during the forward passes (activation
        perturbations); they must sit at or before the RM's Site. ``cache_dir`` (without
        interventions) keeps the features in a FeatureStore keyed by the items' content.
        """
        body = self._need_body()
        its = [(p, self.config.sep + r) for p, r in items]
        ids = [str(i) for i in range(len(its))]
        if cache_dir is not None and not interventions:
            ids = content_ids(its)
            f = cached_item_features(body, its, [self.site], ids, self.config.max_length,
                                     batch_size, cache_dir, "items-" + ids_tag(ids), progress)
        elif interventions:
            with apply(body, *interventions):
                f = item_features(body, its, [self.site], ids, self.config.max_length,
                                  batch_size, progress)
        else:
            f = item_features(body, its, [self.site], ids, self.config.max_length, batch_size,
                              progress)
        return self.head(f[self.site].values)

    def score_pairs(self, pairs: Sequence[PreferencePair], batch_size: int = 32,
                    interventions: Sequence[Intervention] = ()) -> tuple[Tensor, Tensor]:
        """``(r_chosen [n], r_rejected [n])`` for preference pairs."""
        rc = self.score([(p.prompt, p.chosen) for p in pairs], batch_size, interventions)
        rr = self.score([(p.prompt, p.rejected) for p in pairs], batch_size, interventions)
        return rc, rr

    def with_head(self, head: LinearHead) -> RewardModel:
        """The same body and Site with another head (e.g. a random "before training" head)."""
        return RewardModel(head, self.config, self.body)

    # ---------------------------------------------------------------- save/load
    def save(self, folder: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """Write ``head.safetensors`` (+ ``body.safetensors`` with fine-tuned blocks) and
        ``config.json`` into folder ``folder`` via :func:`mechunlearn.outputs.output_folder`
        (atomic; a previous saved reward model there is replaced, a folder holding other
        files is refused; ``.mechunlearn.json`` records the package versions)."""
        from mechunlearn.atomic import atomic_write_json
        from mechunlearn.outputs import output_folder

        with output_folder(folder, "reward-model", overwrite=overwrite,
                           legacy=_legacy_files) as p:
            save_file({k: v.contiguous() for k, v in self.head.tensors().items()},
                      str(p / "head.safetensors"))
            if self.config.tuned_blocks:
                body = self._need_body()
                tensors = {f"blocks.{i}.{n}": t.detach().contiguous().clone()
                           for i in self.config.tuned_blocks
                           for n, t in body.blocks[i].named_parameters()}
                save_file(tensors, str(p / "body.safetensors"))
            atomic_write_json(p / "config.json", self.config.to_dict())
        return Path(folder)

    @classmethod
    def load(cls, folder: str | os.PathLike[str], body: Any = None) -> RewardModel:
        """Load a saved reward model. With fine-tuned blocks, ``body`` must be given and its
        blocks are overwritten **in place**; the body's fingerprint is then checked."""
        p = Path(folder)
        if not (p / "config.json").is_file() or not (p / "head.safetensors").is_file():
            raise ConfigError(f"{p} is not a saved RewardModel (config.json/head.safetensors).")
        from safetensors import SafetensorError

        try:
            cfg = RewardModelConfig.from_dict(json.loads((p / "config.json").read_text()))
            head = LinearHead.from_tensors(load_file(str(p / "head.safetensors")))
        except (OSError, ValueError, KeyError, SafetensorError) as e:
            raise ConfigError(f"Saved RewardModel {p} is corrupt ({e}); save it again.") from e
        if body is not None:
            cfg.site.resolve(body)
            if cfg.tuned_blocks:
                tensors = load_file(str(p / "body.safetensors"))
                with torch.no_grad():
                    for i in cfg.tuned_blocks:
                        for n, t in body.blocks[i].named_parameters():
                            t.copy_(tensors[f"blocks.{i}.{n}"])
            fp = model_fingerprint(body)
            if fp != cfg.fingerprint:
                raise BodyMismatchError(
                    f"Body fingerprint {fp} differs from the saved reward model's "
                    f"{cfg.fingerprint}: a different or modified model.")
        elif cfg.tuned_blocks:
            raise ConfigError(f"{p} holds fine-tuned blocks {list(cfg.tuned_blocks)}; pass the "
                              "base body to load() to restore them.")
        return cls(head, cfg, body)

    # -------------------------------------------------------------- fine-tuning
    def finetune_(self, pairs: Sequence[PreferencePair], n_blocks: int = 1, epochs: int = 1,
                  lr: float = 2e-5, head_lr: float = 1e-3, batch_size: int = 8, seed: int = 0,
                  ) -> list[float]:
        """Fine-tune the last ``n_blocks`` blocks up to the Site, and the head, with the BT
        loss. Edits the body **in place**; returns the per-step losses."""
        from mechunlearn.seal.finetune import finetune_body

        body = self._need_body()
        head, blocks, losses = finetune_body(body, self.head, self.site, pairs, n_blocks, epochs,
                                             lr, head_lr, batch_size, seed,
                                             self.config.max_length, self.config.sep)
        tuned = tuple(sorted(set(self.config.tuned_blocks) | set(blocks)))
        info = {**self.config.info, "finetune_steps": len(losses), "finetune_lr": lr}
        self.head = head
        self.config = replace(self.config, fingerprint=model_fingerprint(body), mode="finetune",
                              tuned_blocks=tuned, info=info)
        return losses


def _legacy_files(folder: Path) -> list[str] | None:
    """Files of a reward model saved before output manifests existed (``None``: not one)."""
    names = ["config.json", "head.safetensors", "body.safetensors"]
    if not all((folder / n).is_file() for n in names[:2]):
        return None
    return names
