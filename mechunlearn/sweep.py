"""Run any function over many Sites and collect a tidy ``pandas.DataFrame``.

``sweep(model, sites, fn)`` calls ``fn(site)``; with ``data`` it first extracts features at
every Site (by default in *one* forward pass per dataset for all Sites, via
:func:`mechunlearn.features.extract` with a list of Sites) and calls ``fn(site, features)``.
``data`` may be a mapping ``{"pos": X+, "neg": X−}``; ``fn`` then gets ``{name: Features}``.

``fn`` returns a mapping (one row), a list of mappings (several rows, e.g. one per method) or
a number (column ``value``). Each row is prefixed with the Site's ``site``, ``hook_name``,
``layer``, ``kind`` (e.g. ``resid_post``), ``position`` and ``head``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from numbers import Number
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from mechunlearn.errors import ConfigError
from mechunlearn.features import Features, extract
from mechunlearn.sites import Site, check_sites


def site_columns(site: Site) -> dict[str, Any]:
    """Descriptive columns for ``site`` (``kind`` is the hook's last name part minus ``hook_``)."""
    last = site.hook_name.split(".")[-1]
    kind = last[5:] if last.startswith("hook_") else last
    if ".attn." in site.hook_name or ".mlp." in site.hook_name:
        kind = site.hook_name.split(".")[2] + "." + kind
    return {"site": site.key, "hook_name": site.hook_name, "layer": site.layer, "kind": kind,
            "position": str(site.position), "head": site.head}


def _rows(out: Any, site: Site) -> list[dict[str, Any]]:
    if isinstance(out, Mapping):
        outs = [out]
    elif isinstance(out, Number):
        outs = [{"value": out}]
    elif isinstance(out, Sequence) and not isinstance(out, str) and all(isinstance(o, Mapping) for o in out):
        outs = list(out)
    else:
        raise ConfigError(
            f"sweep fn returned {type(out).__name__} at {site.key}; return a dict, a list of "
            "dicts or a number."
        )
    return [{**site_columns(site), **o} for o in outs]


def sweep(
    model: Any,
    sites: Sequence[Site],
    fn: Callable[..., Any],
    data: Any = None,
    *,
    reuse_forward: bool = True,
    batch_size: int = 32,
    progress: bool = True,
    extract_kwargs: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Evaluate ``fn`` at every Site; one DataFrame row per returned record.

    Args:
        model: a TransformerBridge (Sites are validated against it).
        sites: Sites to visit, e.g. ``mechunlearn.sites(model, ("resid_pre", "mlp_out"))``.
        fn: ``fn(site)`` or, with ``data``, ``fn(site, features)``.
        data: ``None``; texts / pairs / TokenBatch (``features`` is :class:`Features`
            ``[n, d]``); or ``{name: data}`` (``features`` is ``{name: Features}``).
        reuse_forward: extract all Sites in one forward pass per dataset (memory:
            ``n × d × len(sites)`` floats); otherwise one pass per Site.
        batch_size: forward batch size for extraction.
        progress: show a progress bar over Sites.
        extract_kwargs: extra arguments for :func:`mechunlearn.features.extract`.

    Returns:
        DataFrame with Site columns, ``fn``'s columns and ``seconds`` (time in ``fn``).
    """
    site_list = check_sites(model, sites, "sweep")
    kw = dict(extract_kwargs or {})
    named = isinstance(data, Mapping)
    datasets: dict[str, Any] = dict(data) if named else ({} if data is None else {"_": data})
    cache: dict[str, dict[Site, Features]] = {}
    if datasets and reuse_forward:
        for name, dset in datasets.items():
            cache[name] = extract(model, dset, site_list, batch_size=batch_size, **kw)
    rows: list[dict[str, Any]] = []
    for site in tqdm(site_list, desc="sweep", disable=not progress):
        if not datasets:
            t0 = time.perf_counter()
            out = fn(site)
        else:
            feats = {
                name: cache[name][site] if reuse_forward
                else extract(model, dset, site, batch_size=batch_size, **kw)
                for name, dset in datasets.items()
            }
            t0 = time.perf_counter()
            out = fn(site, feats if named else feats["_"])
        dt = time.perf_counter() - t0
        rows.extend({**r, "seconds": dt} for r in _rows(out, site))
    return pd.DataFrame(rows)
