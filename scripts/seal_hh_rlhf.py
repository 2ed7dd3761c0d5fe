"""SEAL diagnostics of a MiniLM reward model on the hh-rlhf harmless-base sample.

Runs everything offline and prints the figures:

1. load the pairs (malformed records skipped and reported), split 80/20 by content hash;
2. features of chosen/rejected responses at every layer's resid_post with three poolings
   (mean over tokens, mean over response tokens, [CLS]) in one pass, cached in FeatureStores;
3. head-only Bradley-Terry reward model per candidate Site; the Site with the best
   cross-validated *training* accuracy becomes the RM (test accuracy is only reported);
4. alignment resistance before (random head) and after training, overall and per feature;
5. feature imprint of rule/lexicon labelers and a probe labeler, with bootstrap CIs;
6. alignment robustness: text perturbations, and a layer sweep projecting out / steering
   along the refusal direction (difference of means of refusal-labelled responses);
7. a report folder (CSV tables, plots, summary.md).

Usage: ``python scripts/seal_hh_rlhf.py --data PATH --out FOLDER [--cache DIR]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import pandas as pd
import torch

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/hh-rlhf/harmless-base-test.jsonl.gz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--out", default="seal_report")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/mechunlearn/seal"))
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--text-n", type=int, default=300, help="test pairs for text robustness")
    ap.add_argument("--sweep-n", type=int, default=100, help="test pairs for the layer sweep")
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
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

    # The MLM head of all-MiniLM-L6-v2 is missing from the checkpoint and initialised at
    # random by transformers; seeding keeps the weights fingerprint (and the cache) stable.
    torch.manual_seed(args.seed)
    body = load_minilm()
    pairs, rep = load_hh_rlhf(args.data)
    train, test = split_pairs(pairs, 0.2, seed=args.seed)
    print(f"data: {rep.n_loaded} pairs loaded of {rep.n_lines} lines; skipped {rep.reasons} "
          f"(first at line {rep.first_bad_line}); train {len(train)}, test {len(test)}")
    times["load"] = time.time() - t0

    # ---- features at candidate Sites (one pass; cached)
    t = time.time()
    cands = [Site(f"blocks.{i}.hook_resid_post", pos) for i in range(6)
             for pos in ("mean", "response_mean", 0)]
    feats = pair_features(body, pairs, cands, args.max_length, cache_dir=args.cache,
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
        key = hashlib.sha256(f"{fc.fingerprint}|{s.key}|{args.max_length}|{args.seed}|"
                             f"{','.join(pairs[i].id for i in tr)}".encode()).hexdigest()[:16]
        saved = Path(args.cache) / f"rm-{key}"
        if (saved / "config.json").is_file():  # a cached fit of the same head
            loaded = RewardModel.load(saved)
            rm = RewardModel(loaded.head, loaded.config, body)
        else:
            rm = RewardModel.from_features(fc.subset(tr), fr.subset(tr), body, seed=args.seed,
                                           max_length=args.max_length)
            rm.save(saved)
        rc, rr = rm.score_features(fc.subset(te)), rm.score_features(fr.subset(te))
        models[s] = rm
        rows.append({"site": s.key, "layer": s.layer, "pooling": str(s.position),
                     "l2": rm.config.info["l2"], "cv_acc": rm.config.info["cv_accuracy"],
                     "train_acc": rm.config.info["train_accuracy"],
                     "test_acc": alignment_resistance(rc, rr).agreement})
    sites_df = pd.DataFrame(rows)
    best = cands[int(sites_df["cv_acc"].to_numpy().argmax())]
    rm = models[best]
    times["fit_heads"] = time.time() - t
    print("\nsite / pooling comparison (head-only BT, l2 by 5-fold CV on train):")
    print(sites_df.round(3).to_string(index=False))
    print(f"chosen RM site: {best.key}")

    fc, fr = feats["chosen"][best], feats["rejected"][best]
    rc_all, rr_all = rm.score_features(fc), rm.score_features(fr)
    before = random_head(torch.cat([fc.values[tr], fr.values[tr]]), seed=args.seed)
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
    for layer in range(6):
        s = Site(f"blocks.{layer}.hook_resid_post", "mean")
        x = torch.cat([feats["chosen"][s].values[tr], feats["rejected"][s].values[tr]])
        y = torch.tensor(pd.concat([lab_c["refusal"].iloc[tr], lab_r["refusal"].iloc[tr]])
                         .to_numpy() > 0)
        refusal_dirs[s] = x[y].mean(0) - x[~y].mean(0)
    probe_site = Site("blocks.3.hook_resid_post", "mean")
    probe = ProbeLabeler(body, refusal_dirs[probe_site], probe_site, kind="spoiler")
    lab_c["probe_refusal_L3"] = probe.project(feats["chosen"][probe_site])
    lab_r["probe_refusal_L3"] = probe.project(feats["rejected"][probe_site])
    kinds = {lab.name: lab.kind for lab in labelers} | {"probe_refusal_L3": "spoiler"}
    times["labels"] = time.time() - t

    t = time.time()
    imprint = feature_imprint(rc_all, rr_all, lab_c, lab_r, kinds, n_boot=args.boot,
                              seed=args.seed)
    by_feat = resistance_by_feature(rc_all, rr_all, lab_c, lab_r, kinds)
    worst = most_resistant(pairs, rc_all, rr_all, k=10)
    times["imprint"] = time.time() - t

    # ---- robustness (a): text perturbations on test pairs
    t = time.time()
    tp = test[: args.text_n]
    ti = [index[p.id] for p in tp]
    text_rob = text_robustness(
        lambda items: rm.score(items, cache_dir=args.cache), tp, rc_all[ti], rr_all[ti])
    times["text_robustness"] = time.time() - t

    # ---- robustness (b): layer sweep along the refusal direction (cached by content)
    t = time.time()
    sp = test[: args.sweep_n]
    si = [index[p.id] for p in sp]
    sweep_dirs = {s: v for s, v in refusal_dirs.items() if s.layer <= best.layer}
    sweep = _cached_sweep(args.cache, rm, sp, sweep_dirs, rc_all[si], rr_all[si],
                          activation_robustness)
    times["activation_sweep"] = time.time() - t
    times["total"] = time.time() - t0

    info = {"model": "all-MiniLM-L6-v2 (TransformerBridge)", "data": str(args.data),
            "pairs": f"{len(pairs)} ({len(train)} train / {len(test)} test)",
            "reward model": f"head-only BT at {best.key}, l2={rm.config.info['l2']}",
            "RM score SD over all responses": round(float(torch.cat([rc_all, rr_all]).std()), 3),
            "max_length": args.max_length, "threads": args.threads,
            "seconds": {k: round(v, 1) for k, v in times.items()}}
    report = SealReport(res, by_feat, imprint, text_rob, sweep, worst, info)
    out = write_report(report, args.out)
    (out / "sites.csv").write_text(sites_df.to_csv(index=False))

    print("\nalignment resistance:")
    for k, r in res.items():
        print(f"  {k:30s} n={r.n:5d} agreement={r.agreement:.3f} resistance={r.resistance:.3f}")
    print("\nresistance by feature (rejected has more of the feature / chosen has more):")
    piv = by_feat.pivot(index="feature", columns="group", values="resistance").round(3)
    print(piv.to_string())
    print("\nfeature imprint on RM score (coef per SD; 0/1 features raw), 95% bootstrap CI:")
    imp = imprint[imprint["feature"] != "(intercept)"]
    for target in ("score", "reward_diff"):
        t_ = imp[imp["target"] == target].sort_values("coef", key=abs, ascending=False)
        print(f" target={target}")
        print(t_[["feature", "kind", "coef", "ci_low", "ci_high", "p_boot"]].round(3)
              .to_string(index=False))
    print("\ntext robustness:")
    print(text_rob.round(3).to_string(index=False))
    print("\nactivation robustness (refusal direction, per layer):")
    print(sweep.round(3).to_string(index=False))
    print(f"\ntimes (s): {json.dumps(info['seconds'])}")
    print(f"report written to {out}")


def _cached_sweep(cache: str, rm, pairs, dirs, rc, rr, fn) -> pd.DataFrame:
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    out.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return out


if __name__ == "__main__":
    main()
