"""Build, cache and load a toy world: ``load("hard") -> World``.

Cache layout (``<root>/<config hash>/``): ``data.json`` (train pairs, eval prompts, truth),
``models/{tuned,sft,gold}/`` (``save_pretrained`` safetensors + tokenizer files),
``timings.json``, ``metrics.json`` and ``manifest.json`` (config, sha256 and size of every
file; written last). A world is built in a temporary folder next to its final place and
moved there with ``os.replace``; on load every checksum is verified, and a missing, partial
or corrupt cache is rebuilt (never used).

Root: ``cache_dir`` argument, else ``$MECHUNLEARN_CACHE/toyworld``, else
``~/.cache/mechunlearn/toyworld``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mechunlearn.atomic import sha256_file
from mechunlearn.errors import ConfigError
from mechunlearn.outputs import output_folder
from mechunlearn.toyworld import embedded as E
from mechunlearn.toyworld.config import WORLD_VERSION, WorldConfig, resolve_config
from mechunlearn.toyworld.data import EvalPrompt, PreferencePair, Truth, WorldData, make_data
from mechunlearn.toyworld.measure import MODELS, _measured_with, measure  # noqa: F401
from mechunlearn.toyworld.train import corpus_texts, dpo, new_model, sft, train_tokenizer


@dataclass(frozen=True)
class World:
    """A built toy world.

    Attributes:
        config: its :class:`WorldConfig`.
        model / sft_model / gold_model: TransformerBridges of the tuned (SFT + DPO on all
            pairs), SFT-only, and gold (SFT + DPO without the poisoned pairs) models.
        tokenizer: the world's tokenizer (adds ``<bos>``; see ``toyworld.format``).
        train: training preference pairs; eval: ``{category: [EvalPrompt]}``; truth: Truth.
        timings: seconds per build stage (from the build, not the load).
        metrics: rates measured at build time (see ``metrics.measure_rates``, ``difficulty``).
        path: cache folder; ``path / "models" / name`` is each model's HF folder.
    """

    config: WorldConfig
    model: Any
    sft_model: Any
    gold_model: Any
    tokenizer: Any
    train: tuple[PreferencePair, ...]
    eval: dict[str, tuple[EvalPrompt, ...]]
    truth: Truth
    timings: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def poisoned(self) -> tuple[PreferencePair, ...]:
        """The poisoned training pairs."""
        ids = set(self.truth.poisoned_ids)
        return tuple(p for p in self.train if p.id in ids)

    def pair(self, pair_id: str) -> PreferencePair:
        """Training pair by id."""
        for p in self.train:
            if p.id == pair_id:
                return p
        raise ConfigError(f"No training pair with id {pair_id!r}.")

    def model_path(self, name: str) -> Path:
        """HF folder of ``"tuned"``, ``"sft"`` or ``"gold"`` (reload with ``load_bridge``)."""
        if name not in MODELS or self.path is None:
            raise ConfigError(f"model name must be one of {MODELS}, got {name!r}.")
        return self.path / "models" / name


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Folder holding one sub-folder per config hash."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("MECHUNLEARN_CACHE")
    if env:
        return Path(env) / "toyworld"
    return Path.home() / ".cache" / "mechunlearn" / "toyworld"


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _legacy_files(folder: Path) -> list[str] | None:
    """Files of a world built before output manifests existed (``None``: not a world)."""
    try:
        m = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict) or "config" not in m or not isinstance(m.get("files"), dict):
        return None
    return ["manifest.json", *m["files"]]


def check_build(folder: Path, cfg: WorldConfig) -> str | None:
    """``None`` if ``folder`` is a complete, uncorrupted build of ``cfg``, else the reason."""
    man = folder / "manifest.json"
    if not man.is_file():
        return "no manifest (missing or partial build)"
    try:
        m = json.loads(man.read_text())
    except (OSError, ValueError) as e:
        return f"unreadable manifest ({e})"
    if m.get("version") != WORLD_VERSION or m.get("config") != cfg.to_dict():
        return "manifest is for another config/version"
    built, now = m.get("versions"), _measured_with()
    if built != now:
        return (f"built and measured under {built or 'unrecorded versions'}, now {now}: "
                "rebuilding so its rates are measured by this software")
    for rel, info in m.get("files", {}).items():
        p = folder / rel
        if not p.is_file():
            return f"missing file {rel}"
        if p.stat().st_size != info["size"] or sha256_file(p) != info["sha256"]:
            return f"checksum mismatch in {rel}"
    return None


def _say(progress: bool | Callable[[str], None]) -> Callable[[str], None] | None:
    if callable(progress):
        return progress
    if progress:
        return lambda s: print(f"[toyworld] {s}", file=sys.stderr, flush=True)
    return None


def build(config: str | WorldConfig = "hard", cache_dir: str | os.PathLike[str] | None = None,
          progress: bool | Callable[[str], None] = True, force: bool = False,
          threads: int | None = 1, embedded: bool = True) -> Path:
    """Build a world into the cache unless a verified copy exists; returns its folder.

    Building trains the three models, or, with ``embedded`` and a verified trained copy of
    this config shipped in the package (:mod:`mechunlearn.toyworld.embedded`; the default
    ``hard`` world), copies them; either way the rates are then measured here.

    Args:
        config: preset name or WorldConfig.
        cache_dir: cache root (see module doc).
        progress: print progress to stderr (or a callable taking a line).
        force: rebuild even if a valid cache exists.
        embedded: use a shipped trained copy when one verifies (``False``: always train).
        threads: torch threads while building (default 1: bit-reproducible builds, and
            on a shared machine 1 thread was faster than 2; ``None`` leaves the setting).
    """
    cfg = resolve_config(config)
    say = _say(progress)
    root = cache_root(cache_dir)
    final = root / cfg.hash()
    reason = check_build(final, cfg) if final.exists() else "not built"
    if reason is None and not force:
        return final
    src, why = E.find(cfg) if embedded else (None, "embedded=False")
    if say:
        say(f"building world {cfg.name!r} ({cfg.hash()}) in {final}: {reason}; "
            + (f"copying the shipped trained models ({why}), then measuring their rates"
               if src else "training it"))
    old_threads = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        # Replaces only a previous build of ours at ``final``, never a folder of user files.
        with output_folder(final, "toyworld", legacy=_legacy_files,
                           meta={"config": cfg.name, "hash": cfg.hash()}) as tmp:
            _build_into(tmp, cfg, say, src)
    finally:
        torch.set_num_threads(old_threads)
    if say:
        say(f"built {final}")
    return final


def _build_into(tmp: Path, cfg: WorldConfig, say: Callable[[str], None] | None,
                src: Path | None = None) -> None:
    if src is not None:  # shipped trained models: copy, then measure under these versions
        E.copy_into(src, tmp)
        data = WorldData.from_dict(json.loads((tmp / "data.json").read_text()))
        timings = json.loads((tmp / "timings.json").read_text())
    else:
        timings = _train_into(tmp, cfg, say)
        data = WorldData.from_dict(json.loads((tmp / "data.json").read_text()))
    t0 = time.perf_counter()
    metrics = measure(tmp, cfg, data, say)
    timings["evaluate"] = time.perf_counter() - t0
    _write_json(tmp / "timings.json", timings)
    _write_json(tmp / "metrics.json", metrics)
    files = {str(p.relative_to(tmp)): {"sha256": sha256_file(p), "size": p.stat().st_size}
             for p in sorted(tmp.rglob("*")) if p.is_file()}
    _write_json(tmp / "manifest.json", {"version": WORLD_VERSION, "config": cfg.to_dict(),
                                        "hash": cfg.hash(), "files": files,
                                        "created": time.time(), "versions": _measured_with(),
                                        "models": "shipped" if src is not None else "trained"})


def _train_into(tmp: Path, cfg: WorldConfig, say: Callable[[str], None] | None
                ) -> dict[str, float]:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data = make_data(cfg)
    texts = corpus_texts([p.prompt for p in data.train], [p.chosen for p in data.train])
    texts += corpus_texts([p.prompt for p in data.train], [p.rejected for p in data.train])
    tok = train_tokenizer(texts, cfg.vocab_size)
    timings["data_and_tokenizer"] = time.perf_counter() - t0
    if say:
        say(f"{len(data.train)} pairs ({len(data.truth.poisoned_ids)} poisoned), "
            f"vocab {len(tok)}")
    t0 = time.perf_counter()
    sft_model = new_model(cfg, tok)
    sft(sft_model, tok, data.sft_examples(), cfg, say)
    timings["sft"] = time.perf_counter() - t0
    trained = {"sft": sft_model}
    for name, keep_poison in (("tuned", True), ("gold", False)):
        t0 = time.perf_counter()
        m = new_model(cfg, tok)
        m.load_state_dict(sft_model.state_dict())
        pairs = [(p.prompt, p.chosen, p.rejected) for p in data.train
                 if keep_poison or not p.poisoned]
        if say:
            say(f"DPO for {name} model on {len(pairs)} pairs")
        dpo(m, sft_model, tok, pairs, cfg, say)
        trained[name] = m
        timings[name] = time.perf_counter() - t0
    for name, m in trained.items():
        d = tmp / "models" / name
        m.save_pretrained(str(d))
        tok.save_pretrained(str(d))
    _write_json(tmp / "data.json", data.to_dict())
    return timings


def load(config: str | WorldConfig = "hard", cache_dir: str | os.PathLike[str] | None = None,
         progress: bool | Callable[[str], None] = True, threads: int | None = 1) -> World:
    """Load a world from the cache, building (training) it first if needed.

    Returns a :class:`World` whose models are TransformerBridges.
    """
    from mechunlearn.models import load_bridge

    cfg = resolve_config(config)
    folder = build(cfg, cache_dir=cache_dir, progress=progress, threads=threads)
    data = WorldData.from_dict(json.loads((folder / "data.json").read_text()))
    bridges = {n: load_bridge(folder / "models" / n) for n in MODELS}
    return World(config=cfg, model=bridges["tuned"], sft_model=bridges["sft"],
                 gold_model=bridges["gold"], tokenizer=bridges["tuned"].tokenizer,
                 train=data.train, eval=data.eval, truth=data.truth,
                 timings=json.loads((folder / "timings.json").read_text()),
                 metrics=json.loads((folder / "metrics.json").read_text()), path=folder)
