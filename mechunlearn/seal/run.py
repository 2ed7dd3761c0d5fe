"""The full SEAL diagnosis of a reward model on a preference file (Revel et al., arXiv:2408.10270), as one call.

``run_seal(data, out)`` loads the pairs (malformed records skipped and reported), splits them
80/20 by content hash, reads features of chosen/rejected responses at every layer's
``hook_resid_post`` with three poolings in one pass (cached in FeatureStores), fits a head-only
Bradley-Terry reward model per candidate Site and keeps the Site with the best
cross-validated *training* accuracy, then measures alignment resistance (before/after, per
feature), feature imprint (rule/lexicon labelers + a probe labeler, bootstrap CIs) and
alignment robustness (text perturbations; a layer sweep projecting out / steering along the
refusal direction), and writes a report folder. ``scripts/seal_hh_rlhf.py`` and
``mechunlearn seal`` call it.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from mechunlearn.atomic import atomic_write_bytes
from mechunlearn.errors import EmptyDataError, ShapeError


@dataclass(frozen=True)
class SealRun:
    """The report, the per-Site reward-model comparison, and where the report folder is."""

    report: Any  # SealReport
    sites: pd.DataFrame
    folder: Path


def run_seal(data: str | os.PathLike[str], out: str | os.PathLike[str], model: Any = None,
             cache: str | os.PathLike[str] | None = None, max_length: int = 128,
             text_n: int = 300, sweep_n: int = 100, n_boot: int = 1000, seed: int = 0,
             say: Callable[[str], None] = print, overwrite: bool = False) -> SealRun:
    """Diagnose a reward model trained on ``data`` (hh-rlhf or prompt/chosen/rejected JSONL).

    Args:
        out: report folder (see :func:`mechunlearn.seal.report.write_report`; checked before
            any work, ``overwrite`` as there).
        model: the reward model's body (a TransformerBridge with 6+ blocks); default: the
            packaged all-MiniLM-L6-v2 encoder.
        cache: FeatureStore / fitted-head cache folder (default ``~/.cache/mechunlearn/seal``).
        text_n, sweep_n: test pairs used for text robustness and for the layer sweep.
        n_boot: bootstrap resamples for the imprint confidence intervals.
    """
    from mechunlearn.outputs import check_destination

    check_destination(out, "seal-report", overwrite)  # refuse a bad --out before any work
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cache = os.path.expanduser(str(cache or "~/.cache/mechunlearn/seal"))
    t0 = time.time()
    times: dict[str, float] = {}

    from mechunlearn.models import load_minilm
    from mechunlearn.seal import (
        ProbeLabeler,
        RewardModel,
        SealReport,
        activation_robustness,
        alignment_resistance,
        default_labelers,
        feature_imprint,
        label,
        load_hh_rlhf,
        most_resistant,
        pair_features,
        random_head,
        resistance_by_feature,
        split_pairs,
        text_robustness,
        write_report,
    )
    from mechunlearn.sites import Site

    body = load_minilm() if model is None else model
    pairs, rep = load_hh_rlhf(data)
    if len(pairs) < 10:
        why = ", ".join(f"{k}: {v}" for k, v in rep.reasons.items()) or "none"
        raise EmptyDataError(
            f"{data}: {len(pairs)} usable preference pair(s) of {rep.n_lines} record(s); SEAL "
            f"needs at least 10. Skipped {rep.n_skipped} ({why}); first skipped at line "
            f"{rep.first_bad_line}: {rep.first_error or '-'}. Records need 'chosen' and "
            "'rejected' hh-rlhf dialogues, or 'prompt'+'chosen'+'rejected' with different, "
            "non-empty responses."
        )
    train, test = split_pairs(pairs, 0.2, seed=seed)
    skipped = (f"; skipped {rep.n_skipped} {rep.reasons} (first at line {rep.first_bad_line})"
               if rep.n_skipped else "")
    say(f"data: {rep.n_loaded} pairs loaded of {rep.n_lines} lines{skipped}; train "
        f"{len(train)}, test {len(test)}")
    times["load"] = time.time() - t0

    # ---- features at candidate Sites (one pass; cached)
    t = time.time()
    n_layers = int(body.cfg.n_layers)
    # position 0 is BERT's [CLS] (it sees everything); in a causal LM it sees only the first
    # token, which is the same for every hh-rlhf item, so its features are constant: use the
    # last token (the one that sees the whole text) there instead
    pooled = ("mean", "response_mean", "last" if is_causal(body) else 0)
    cands = [Site(f"blocks.{i}.hook_resid_post", pos) for i in range(n_layers)
             for pos in pooled]
    feats = pair_features(body, pairs, cands, max_length, cache_dir=cache,
                          progress=True)
    times["features"] = time.time() - t
    index = {p.id: i for i, p in enumerate(pairs)}
    tr = [index[p.id] for p in train]
    te = [index[p.id] for p in test]

    # ---- reward model per candidate Site, chosen by CV accuracy on train
    t = time.time()
    rows, models = [], {}
    for s in cands:
        fc, fr = feats["chosen"][s], feats["rejected"][s]
        key = hashlib.sha256(f"{fc.fingerprint}|{s.key}|{max_length}|{seed}|"
                             f"{','.join(pairs[i].id for i in tr)}".encode()).hexdigest()[:16]
        saved = Path(cache) / f"rm-{key}"
        if (saved / "config.json").is_file():  # a cached fit of the same head
            loaded = RewardModel.load(saved)
            rm = RewardModel(loaded.head, loaded.config, body)
        else:
            try:
                rm = RewardModel.from_features(fc.subset(tr), fr.subset(tr), body, seed=seed,
                                               max_length=max_length)
            except ShapeError as e:  # e.g. constant features at this Site: not a candidate
                say(f"site {s.key} skipped: {e}")
                continue
            rm.save(saved)
        rc, rr = rm.score_features(fc.subset(te)), rm.score_features(fr.subset(te))
        models[s] = rm
        rows.append({"site": s.key, "layer": s.layer, "pooling": str(s.position),
                     "l2": rm.config.info["l2"], "cv_acc": rm.config.info["cv_accuracy"],
                     "train_acc": rm.config.info["train_accuracy"],
                     "test_acc": alignment_resistance(rc, rr).agreement})
    if not rows:
        raise ShapeError(f"No candidate Site gave usable features ({[c.key for c in cands]}); "
                         "see the 'skipped' lines above.")
    sites_df = pd.DataFrame(rows)
    best = [c for c in cands if c in models][int(sites_df["cv_acc"].to_numpy().argmax())]
    rm = models[best]
    times["fit_heads"] = time.time() - t
    say(f"chosen RM site: {best.key} (best cross-validated training accuracy)")

    fc, fr = feats["chosen"][best], feats["rejected"][best]
    rc_all, rr_all = rm.score_features(fc), rm.score_features(fr)
    before = random_head(torch.cat([fc.values[tr], fr.values[tr]]), seed=seed)
    res = {
        "before (random head), test": alignment_resistance(before(fc.values[te]),
                                                           before(fr.values[te])),
        "after, train": alignment_resistance(rc_all[tr], rr_all[tr]),
        "after, test": alignment_resistance(rc_all[te], rr_all[te]),
        "after, all pairs": alignment_resistance(rc_all, rr_all),
    }

    # ---- labels: rule/lexicon labelers + a probe labeler (refusal direction at layer 3)
    t = time.time()
    labelers = default_labelers()
    lab_c = label([p.chosen for p in pairs], labelers)
    lab_r = label([p.rejected for p in pairs], labelers)
    refusal_dirs = {}
    findings: list[str] = []
    y_ref = torch.tensor(pd.concat([lab_c["refusal"].iloc[tr], lab_r["refusal"].iloc[tr]])
                         .to_numpy() > 0)
    n_fired = int(y_ref.sum())
    if 0 < n_fired < len(y_ref):
        for layer in range(n_layers):
            s = Site(f"blocks.{layer}.hook_resid_post", "mean")
            x = torch.cat([feats["chosen"][s].values[tr], feats["rejected"][s].values[tr]])
            refusal_dirs[s] = x[y_ref].mean(0) - x[~y_ref].mean(0)
    else:  # a labeler that never (or always) fires is a finding, not a crash
        findings.append(
            f"The refusal labeler fired on {n_fired} of {len(y_ref)} training responses: no "
            "refusal direction exists in this data, so the probe labeler and the activation "
            "sweep along it were skipped and the refusal imprint is undefined."
        )
    for name in lab_c.columns:
        col = pd.concat([lab_c[name], lab_r[name]])
        if col.nunique() <= 1:
            findings.append(f"Label {name!r} is constant ({col.iloc[0]}) on every response: "
                            "its imprint is undefined (no row in the imprint table).")
    kinds = {lab.name: lab.kind for lab in labelers}
    if refusal_dirs:
        probe_site = Site(f"blocks.{min(3, n_layers - 1)}.hook_resid_post", "mean")
        probe = ProbeLabeler(body, refusal_dirs[probe_site], probe_site, kind="spoiler")
        lab_c["probe_refusal_L3"] = probe.project(feats["chosen"][probe_site])
        lab_r["probe_refusal_L3"] = probe.project(feats["rejected"][probe_site])
        kinds["probe_refusal_L3"] = "spoiler"
    for f in findings:
        say(f"finding: {f}")
    times["labels"] = time.time() - t

    t = time.time()
    imprint = feature_imprint(rc_all, rr_all, lab_c, lab_r, kinds, n_boot=n_boot,
                              seed=seed)
    by_feat = resistance_by_feature(rc_all, rr_all, lab_c, lab_r, kinds)
    worst = most_resistant(pairs, rc_all, rr_all, k=10)
    times["imprint"] = time.time() - t

    # ---- robustness (a): text perturbations on test pairs
    t = time.time()
    tp = test[: text_n]
    ti = [index[p.id] for p in tp]
    text_rob = text_robustness(
        lambda items: rm.score(items, cache_dir=cache), tp, rc_all[ti], rr_all[ti])
    times["text_robustness"] = time.time() - t

    # ---- robustness (b): layer sweep along the refusal direction (cached by content)
    t = time.time()
    sp = test[: sweep_n]
    si = [index[p.id] for p in sp]
    sweep_dirs = {s: v for s, v in refusal_dirs.items() if s.layer <= best.layer}
    sweep = (_cached_sweep(cache, rm, sp, sweep_dirs, rc_all[si], rr_all[si],
                           activation_robustness) if sweep_dirs else pd.DataFrame())
    times["activation_sweep"] = time.time() - t
    times["total"] = time.time() - t0

    info = {"model": "all-MiniLM-L6-v2 (TransformerBridge)" if model is None else type(model).__name__, "data": str(data),
            "pairs": f"{len(pairs)} ({len(train)} train / {len(test)} test)",
            "reward model": f"head-only BT at {best.key}, l2={rm.config.info['l2']}",
            "RM score SD over all responses": round(float(torch.cat([rc_all, rr_all]).std()), 3),
            "max_length": max_length, "threads": torch.get_num_threads(),
            "findings": findings,
            "seconds": {k: round(v, 1) for k, v in times.items()}}
    report = SealReport(res, by_feat, imprint, text_rob, sweep, worst, info)
    folder = write_report(report, out, overwrite=overwrite, extra_tables={"sites": sites_df})
    return SealRun(report, sites_df, Path(folder))



def is_causal(body: Any) -> bool:
    """Whether ``body`` wraps a causal LM (each position sees only earlier tokens)."""
    hf = getattr(body, "original_model", None)
    name = type(hf).__name__ if hf is not None else ""
    cfg = getattr(hf, "config", None)
    return ("CausalLM" in name or "LMHead" in name or bool(getattr(cfg, "is_decoder", False))
            or getattr(cfg, "model_type", "") in ("gpt2", "llama", "gpt_neox", "opt"))


def _cached_sweep(cache: str, rm: Any, pairs: Any, dirs: Any, rc: Any, rr: Any, fn: Any
                  ) -> pd.DataFrame:
    """Run the project/steer sweep, or read it from a CSV keyed by every input."""
    from mechunlearn.features import model_fingerprint

    h = hashlib.sha256()
    h.update(model_fingerprint(rm.body).encode())
    for name, t in sorted(rm.head.tensors().items()):
        h.update(name.encode() + t.double().numpy().tobytes())
    for p in pairs:
        h.update(p.id.encode())
    for s, v in dirs.items():
        h.update(s.key.encode() + v.double().numpy().tobytes())
    path = Path(cache) / f"sweep-{h.hexdigest()[:16]}.csv"
    if path.is_file():
        return pd.read_csv(path)
    parts = []
    for mode in ("project", "steer"):
        df = fn(rm, pairs, dirs, mode, alpha=1.0, r_chosen=rc, r_rejected=rr)
        df.insert(0, "sweep", f"refusal-{mode}")
        parts.append(df)
    out = pd.concat(parts, ignore_index=True)
    atomic_write_bytes(path, out.to_csv(index=False).encode())
    return out


