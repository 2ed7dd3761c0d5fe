"""How hard is a world for attribution? The RepSim (cosine similarity) baseline AUC.

For each bad eval query (a held-out trigger prompt with the bad response the tuned model
gives), every training pair (prompt + chosen response) is scored by the cosine similarity of
their features at a Site; the AUC of those scores for the poisoned ids (vs. all clean ids) is
averaged over queries. Near 1 means surface similarity alone finds the poison (``easy``);
well below 1 means a method has to do better than similarity (``hard``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mechunlearn.errors import EmptyDataError
from mechunlearn.features import extract
from mechunlearn.ranking import auc
from mechunlearn.sites import Site
from mechunlearn.toyworld.data import EvalPrompt, PreferencePair
from mechunlearn.toyworld.format import encode_pairs


def repsim_auc(model: Any, train: Sequence[PreferencePair], queries: Sequence[EvalPrompt],
               query_responses: Sequence[str], layers: Sequence[int] | None = None,
               positions: Sequence[str] = ("response_mean", "last"),
               batch_size: int = 64) -> dict[str, float]:
    """RepSim AUC for the poisoned ids at each layer's ``resid_post`` and position.

    Args:
        model: the tuned bridge.
        train: training pairs (features of prompt + chosen response).
        queries: eval prompts of the bad behaviour (e.g. ``world.eval["trigger"]``).
        query_responses: the bad responses to those prompts (e.g. the tuned model's
            generations judged bad).
        layers: block indices (default all).
        positions: Site positions (``"response_mean"``, ``"last"``, ``"mean"``).

    Returns:
        ``{"blocks.{l}.hook_resid_post@{position}": mean AUC over queries}``.
    """
    if len(queries) == 0 or len(queries) != len(query_responses):
        raise EmptyDataError(f"repsim_auc() needs >= 1 query with one response each; got "
                             f"{len(queries)} queries, {len(query_responses)} responses.")
    n_layers = int(model.cfg.n_layers)
    layer_list = list(range(n_layers)) if layers is None else list(layers)
    sites = [Site(f"blocks.{layer}.hook_resid_post", pos) for layer in layer_list
             for pos in positions]
    tok = model.tokenizer
    tb_train = encode_pairs(tok, [p.prompt for p in train], [p.chosen for p in train])
    tb_query = encode_pairs(tok, [q.prompt for q in queries], list(query_responses))
    f_train = extract(model, tb_train, sites, batch_size=batch_size, progress=False)
    f_query = extract(model, tb_query, sites, batch_size=batch_size, progress=False)
    positive = torch.tensor([p.poisoned for p in train])
    out: dict[str, float] = {}
    for s in sites:
        a = torch.nn.functional.normalize(f_train[s].values.double(), dim=1)
        q = torch.nn.functional.normalize(f_query[s].values.double(), dim=1)
        sims = q @ a.T  # [n_queries, n_train]
        out[s.key] = sum(auc(row, positive) for row in sims) / len(sims)
    return out
