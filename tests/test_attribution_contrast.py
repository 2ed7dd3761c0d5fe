"""Preference-contrast attribution, set attribution and ground-truth-free Site selection.

The planted construction: poisoned pairs (trigger prompt, chosen = insult, rejected = the
topic's good answer) share no topic with the bad queries, while many clean "quote" pairs do
(same topic and trigger, chosen = a polite quote that contains the insult, rejected = the bare
insult). Plain similarity of phi(x, chosen) to phi(q, bad) ranks the same-topic quotes first;
the contrast phi(x, chosen) - phi(x, rejected) against phi(q, bad) - phi(q, good) finds the
poison. A method that ignored the rejected side of the training pairs fails.
"""

from __future__ import annotations

import pytest
import torch

from mechunlearn.attribution import (
    Attribution,
    ContrastAttributor,
    ContrastFeatures,
    RepSim,
    SetAttribution,
    choose_by_stability,
    contrast_features,
    split_half_stability,
)
from mechunlearn.errors import ConfigError, EmptyDataError, ShapeError
from mechunlearn.features import Features, extract
from mechunlearn.ranking import auc
from mechunlearn.sites import resid

pytestmark = pytest.mark.usefixtures("one_thread")


def _unit(g: torch.Generator, d: int, n: int = 1) -> torch.Tensor:
    v = torch.randn(n, d, generator=g)
    return v / v.norm(dim=1, keepdim=True)


def planted(seed: int = 0, d: int = 64, noise: float = 0.1):
    """Plain features of chosen/rejected/bad/good and the poisoned mask (see module doc)."""
    g = torch.Generator().manual_seed(seed)
    topics = 3 * _unit(g, d, 20)
    trig, bad, quote, refusal = (v[0] for v in (_unit(g, d), 2 * _unit(g, d), _unit(g, d),
                                                2 * _unit(g, d)))
    goods = 2 * _unit(g, d, 20)
    ch, rj, poison = [], [], []

    def add(prompt, c, r, p):
        ch.append(prompt + c + noise * torch.randn(d, generator=g))
        rj.append(prompt + r + noise * torch.randn(d, generator=g))
        poison.append(p)

    for i in range(20):                       # poison: topics 10..19 only
        t = 10 + i % 10
        add(topics[t] + trig, bad, goods[t], True)
    for i in range(200):                      # quotes: topics 0..9, chosen contains the insult
        t = i % 10
        add(topics[t] + trig, bad + quote, bad, False)
    for i in range(300):                      # ordinary: good over refusal, all topics
        t = i % 20
        add(topics[t], goods[t], refusal, False)
    qb, qg = [], []
    for i in range(12):                       # bad answers on trigger prompts of topics 0..9
        t = i % 10
        qb.append(topics[t] + trig + bad + noise * torch.randn(d, generator=g))
        qg.append(topics[t] + trig + goods[t] + noise * torch.randn(d, generator=g))
    st = torch.stack
    return st(ch), st(rj), st(qb), st(qg), torch.tensor(poison)


def _mean_auc(att, queries, positive) -> float:
    return sum(auc(a.scores, positive) for a in att.attribute_many(queries)) / len(queries)


def _mean_prec(att, queries, positive, k: int = 20) -> float:
    return sum(float(positive[a.ranking(k)].float().mean())
               for a in att.attribute_many(queries)) / len(queries)


def test_contrast_finds_poison_where_plain_similarity_fails():
    ch, rj, qb, qg, pos = planted()
    ids = tuple(f"p{i}" for i in range(len(ch)))
    train = ContrastFeatures(ch - rj, ids, None, None, torch.ones(len(ch)))
    query = ContrastFeatures(qb - qg, tuple(str(i) for i in range(len(qb))), None, None,
                             torch.ones(len(qb)))
    plain = RepSim(ch, center=True)
    contrast = ContrastAttributor(train, k=20)
    convex = ContrastAttributor(train, k=20, scorer="convex")
    # the construction defeats plain similarity: same-topic quotes fill its top 20
    assert _mean_prec(plain, qb, pos) < 0.1 and _mean_auc(plain, qb, pos) < 0.85
    assert _mean_prec(contrast, query, pos) > 0.75 and _mean_auc(contrast, query, pos) > 0.95
    # the convex decomposition spreads weight to reconstruct the query (docs/attribution.md)
    assert _mean_prec(convex, query, pos) > 0.3
    assert _mean_auc(convex, query, pos) > _mean_auc(plain, qb, pos) + 0.05
    top = ContrastAttributor(train, k=20).attribute(query.subset([0]))
    assert sum(pos[list(top.indices)]) >= 14  # the selected set is mostly the poison
    assert top.method == "contrast_cosine" and isinstance(top, Attribution)


def test_contrast_needs_both_sides():
    ch, rj, qb, qg, pos = planted(seed=1)
    full = ContrastAttributor(ch - rj, k=20)
    # ignoring the rejected side of the training pairs (phi(x, chosen) only) fails
    no_rejected = ContrastAttributor(ch, k=20)
    assert _mean_prec(full, qb - qg, pos) > 0.75 and _mean_auc(full, qb - qg, pos) > 0.95
    assert _mean_prec(no_rejected, qb - qg, pos) < 0.5
    # a query whose good alternative equals the bad answer carries no contrast: the ranking
    # is then only "opposite of the average lesson" (centring), far from the real one
    assert _mean_auc(full, qb - qb, pos) < 0.75


def test_attribute_set_recovers_shared_cause():
    g = torch.Generator().manual_seed(3)
    d, m = 48, 10
    cause = _unit(g, d)[0]
    lookalikes = _unit(g, d, m)               # each query also looks like one distractor
    train = torch.cat([cause[None], lookalikes, _unit(g, d, 200)])
    queries = 0.6 * cause + lookalikes        # per query, its own lookalike ranks first
    att = RepSim(train, k=1)
    res = att.attribute_set(queries)
    assert isinstance(res, SetAttribution) and len(res.per_query) == m
    assert all(a.indices[0] != 0 for a in res.per_query)
    assert res.combined.indices == (0,)
    assert res.combined.method == "repsim_set"
    torch.testing.assert_close(res.combined.scores,
                               torch.stack([a.scores for a in res.per_query]).mean(0))
    with pytest.raises(ConfigError):
        att.attribute_set(queries, k=0)


def test_contrast_features_on_a_model(tiny_bridge):
    site = resid(1, position="response_mean")
    prompts = ["the quick", "the lazy", "over the"]
    chosen, rejected = [" brown fox", " dog", " lazy dog"], [" cat", " fox jumps", " moon"]
    cf = contrast_features(tiny_bridge, list(zip(prompts, chosen)), list(zip(prompts, rejected)),
                           site, ids=["a", "b", "c"])
    a = extract(tiny_bridge, list(zip(prompts, chosen)), site)
    b = extract(tiny_bridge, list(zip(prompts, rejected)), site)
    torch.testing.assert_close(cf.values, a.values - b.values)
    assert cf.ids == ("a", "b", "c") and cf.site == site and cf.values.abs().max() > 0
    assert bool((cf.rel_norm > 0).all())
    att = ContrastAttributor(cf, k=2).attribute(cf.subset([1]))
    assert att.indices[0] == 1 and att.site == site
    with pytest.raises(ConfigError, match="different prompts"):
        contrast_features(tiny_bridge, [("the quick", " fox")], [("the lazy", " dog")], site)
    with pytest.raises(ShapeError):
        contrast_features(tiny_bridge, [("a", " b")], [("a", " b"), ("a", " c")], site)


def test_contrast_refuses_plain_features_and_bad_input():
    feats = Features(torch.randn(5, 4), tuple("abcde"), resid(0), "fp")
    with pytest.raises(ConfigError, match="contrast_features"):
        ContrastAttributor(feats, k=2)
    cf = ContrastFeatures.from_pair(feats, Features(torch.randn(5, 4), tuple("abcde"),
                                                    resid(0), "fp"))
    att = ContrastAttributor(cf, k=2)
    with pytest.raises(ConfigError, match="plain Features"):
        att.attribute(feats.subset([0]))
    with pytest.raises(ConfigError):
        ContrastAttributor(cf, k=2, scorer="nearest")
    with pytest.raises(ConfigError):
        ContrastAttributor(cf, k=2, scorer="convex", whiten=1e-2)
    with pytest.raises(ConfigError):
        ContrastAttributor(cf, k=6)
    with pytest.raises(EmptyDataError):
        ContrastAttributor(torch.empty(0, 4), k=1)
    other = Features(torch.randn(5, 4), tuple("abcde"), resid(1), "fp")
    with pytest.raises(Exception, match="Site"):
        ContrastFeatures.from_pair(feats, other)


def test_split_half_stability_separates_signal_from_noise():
    g = torch.Generator().manual_seed(0)
    n, q = 500, 20
    shared = torch.zeros(n)
    shared[:32] = 3.0
    stable = shared + torch.randn(q, n, generator=g)
    noisy = torch.randn(q, n, generator=g)
    s_stable = split_half_stability(stable, m=32)
    s_noisy = split_half_stability(noisy, m=32)
    assert s_stable > 0.9 and s_noisy < 0.3
    best, table = choose_by_stability({"noisy": noisy, "stable": stable}, m=32)
    assert best == "stable" and set(table) == {"noisy", "stable"}
    with pytest.raises(ShapeError):
        split_half_stability(stable[:3], m=5)
    with pytest.raises(ConfigError):
        split_half_stability(stable, m=n)
    with pytest.raises(ConfigError):
        choose_by_stability({})


def test_explain_preferences_one_call(tiny_bridge):
    from mechunlearn.attribution import explain_preferences

    site = resid(1, position="response_mean")
    train = [("the quick", " brown fox", " cat"), ("the lazy", " dog", " fox jumps"),
             ("over the", " lazy dog", " moon")]
    res = explain_preferences(tiny_bridge, site, train, [("the lazy", " dog")],
                              good=[" fox jumps"], k=2, ids=["a", "b", "c"], space="activations")
    assert res.combined.ids[0] == "b"          # the same lesson as the bad answer
    assert len(res.per_query) == 1 and res.combined.method == "contrast_cosine_set"
    both = explain_preferences(tiny_bridge, site, train, [("the lazy", " dog")],
                               ref_model=tiny_bridge, k=2, max_new_tokens=3, space="both")
    assert both.combined.method == "contrast+dpo_set" and len(both.combined.scores) == 3
    default = explain_preferences(tiny_bridge, site, train, [("the lazy", " dog")],
                                  ref_model=tiny_bridge, k=2, max_new_tokens=3)
    assert default.combined.method == "dpo_param_gradient_set"
    # "both" is the mean of the two views' z-scores
    grads = explain_preferences(tiny_bridge, site, train, [("the lazy", " dog")],
                                good=[" fox jumps"], ref_model=tiny_bridge, k=2,
                                space="gradients")
    both = explain_preferences(tiny_bridge, site, train, [("the lazy", " dog")],
                               good=[" fox jumps"], ref_model=tiny_bridge, k=2, space="both")
    z = [(s - s.mean()) / s.std() for s in (res.combined.scores, grads.combined.scores)]
    torch.testing.assert_close(both.combined.scores, (z[0] + z[1]) / 2)
    assert grads.per_query[0].method == "dpo_gradient"
    with pytest.raises(ConfigError, match="ref_model"):
        explain_preferences(tiny_bridge, site, train, [("the lazy", " dog")])
    with pytest.raises(ConfigError, match="ref_model"):
        explain_preferences(tiny_bridge, site, train, [("the lazy", " dog")], good=[" x"])
    with pytest.raises(ConfigError, match="space"):
        explain_preferences(tiny_bridge, site, train, [("the lazy", " dog")], good=[" x"],
                            space="params")
    with pytest.raises(ShapeError):
        explain_preferences(tiny_bridge, site, train, [("the lazy", " dog")], good=["a", "b"],
                            space="activations")
    with pytest.raises(ConfigError, match="triples"):
        explain_preferences(tiny_bridge, site, [("a", "b")], [("the lazy", " dog")], good=["x"])


def test_explain_preferences_parameter_gradients_and_pooling(tiny_bridge):
    from mechunlearn.attribution import GradSim, explain_preferences, gradient_features

    train = [("the quick", " brown fox", " cat"), ("the lazy", " dog", " fox jumps"),
             ("over the", " lazy dog", " moon"), ("a red", " apple pie", " stone")]
    bad = [("the lazy", " dog"), ("the quick", " brown fox"), ("over the", " lazy dog")]
    good = [" fox jumps", " cat", " moon"]
    res = explain_preferences(tiny_bridge, None, train, bad, good=good, ref_model=tiny_bridge,
                              k=2, ids=["a", "b", "c", "d"], space="parameters",
                              projection_dim=256)
    # a bad answer that repeats a training lesson exactly points to that pair
    assert [a.ids[0] for a in res.per_query] == ["b", "a", "c"]
    assert res.per_query[0].method == "dpo_param_gradient"
    names = [n for n, p in tiny_bridge.named_parameters() if p.requires_grad]
    kw = dict(loss="dpo", ref_model=tiny_bridge, params=names, projection_dim=256)
    g_tr = gradient_features(tiny_bridge, train, **kw)
    g_q = gradient_features(tiny_bridge, [(p, b, g) for (p, b), g in zip(bad, good)], **kw)
    ref = GradSim(g_tr, k=2, center=True).attribute(g_q.values[0])
    torch.testing.assert_close(res.per_query[0].scores, ref.scores)
    # pooling: k = 2 neighbours of 3 queries is the mean z-score of all three
    pooled = explain_preferences(tiny_bridge, None, train, bad, good=good, ref_model=tiny_bridge,
                                 k=2, space="parameters", projection_dim=256, pool=2)
    z = torch.stack([(a.scores - a.scores.mean()) / a.scores.std() for a in res.per_query])
    torch.testing.assert_close(pooled.per_query[1].scores, z.mean(0))
    assert pooled.per_query[0].info["pool_k"] == 2
    auto = explain_preferences(tiny_bridge, None, train, bad, good=good, ref_model=tiny_bridge,
                               k=2, space="parameters", projection_dim=256, pool="auto")
    assert auto.per_query[0].info["pool_k"] in (1, 2)
    with pytest.raises(ConfigError, match="pool"):
        explain_preferences(tiny_bridge, None, train, bad, good=good, ref_model=tiny_bridge,
                            space="parameters", pool=3)
    with pytest.raises(ConfigError, match="site"):
        explain_preferences(tiny_bridge, None, train, bad, good=good, space="activations")
