"""The METHODS registry (one interface for every attribution method) and the EK-FAC adapter."""

from __future__ import annotations

import pytest
import torch

from mechunlearn.attribution import METHODS, ZMeanAttributor, influence, make, methods, registry
from mechunlearn.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_feature_method_ranks_a_planted_neighbour_first():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(80, 16, generator=g)
    q = X[7] + 0.01 * torch.randn(16, generator=g)
    assert set(methods("features")) >= {"convex", "repsim", "repsim_centered", "random"}
    for name in methods("features"):
        a = make(name, X, k=4).attribute_many(q[None])[0]
        assert a.scores.shape == (80,) and len(a.indices) <= 4
        if name != "random":
            assert a.ranking(1).item() == 7, name


def test_gradient_and_contrast_methods_share_the_interface():
    from mechunlearn.attribution import ContrastFeatures

    g = torch.Generator().manual_seed(1)
    C, G = torch.randn(50, 8, generator=g), torch.randn(50, 8, generator=g)
    cf = ContrastFeatures(C, tuple(map(str, range(50))), None, None, C.norm(dim=1))
    assert METHODS["contrast+dpo"].inputs == "contrast+gradients"
    ens = make("contrast+dpo", (cf, G), k=3)
    a = ens.attribute_many((C[[4, 9]] * 2, G[[4, 9]] * 3))
    assert [x.ranking(1).item() for x in a] == [4, 9] and a[0].method == "contrast+dpo"
    for name in methods("gradients") + methods("contrast"):
        train = G if METHODS[name].inputs == "gradients" else cf
        assert make(name, train, k=2).attribute(train.values[3] if name.startswith("contrast")
                                                else G[3]).scores.shape == (50,)


def test_zmean_of_one_view_keeps_its_ranking_and_checks_sizes():
    X = torch.randn(30, 5)
    one = make("repsim", X, k=3)
    z = ZMeanAttributor([one], k=3).attribute_many((X[:2],))
    assert [a.ranking(5).tolist() for a in z] == [a.ranking(5).tolist()
                                                  for a in one.attribute_many(X[:2])]
    with pytest.raises(ConfigError, match="same training samples"):
        ZMeanAttributor([one, make("repsim", X[:20], k=3)])
    with pytest.raises(ConfigError, match="one query batch per part"):
        ZMeanAttributor([one], k=3).attribute_many(X[:2])


def test_unknown_method_and_missing_kronfluence_are_typed_errors(monkeypatch):
    with pytest.raises(ConfigError, match="choose from"):
        make("magic", torch.randn(5, 2))
    monkeypatch.setattr(influence, "kronfluence_available", lambda: False)
    reg = registry._all()
    assert "ekfac" not in reg and "repsim" in reg
    with pytest.raises(ConfigError, match="--no-deps kronfluence"):
        reg["ekfac"]
    with pytest.raises(ConfigError, match="--no-deps kronfluence"):
        influence.EKFACAttributor(None, [("a", "b")])


WORDS = "apple river stone cloud green fast quiet bright music paper window table".split()
TRAIN = [(f"Q: tell me about {WORDS[i]} and {WORDS[(i * 5) % 12]}",
          f" A: {WORDS[(i * 7 + 3) % 12]} {WORDS[(i + 2) % 12]} {WORDS[(i * 3) % 12]} is nice")
         for i in range(12)]


@pytest.mark.parametrize("name", ["ekfac", "ekfac_dpo"])
def test_ekfac_ranks_the_training_copy_of_the_query_first(tiny_bridge, name):
    pytest.importorskip("kronfluence")
    items = TRAIN if name == "ekfac" else [(p, r, " A: no") for p, r in TRAIN]
    opts = {"ref_model": tiny_bridge} if name == "ekfac_dpo" else {}
    from mechunlearn.attribution import gradient_features
    from mechunlearn.sites import resid

    # a backward pass leaves non-leaf tensors cached on the bridge: the copy must cope
    gradient_features(tiny_bridge, TRAIN[:2], resid(1, position="response_mean"), loss="nll")
    before = {n: p.clone() for n, p in tiny_bridge.named_parameters()}
    att = make(name, items, k=3, model=tiny_bridge, **opts)
    res = att.attribute_many([TRAIN[5], TRAIN[9]])
    assert [a.scores.shape for a in res] == [(12,), (12,)]
    assert [a.ranking(1).item() for a in res] == [5, 9]  # random scores: 1/144 chance
    assert res[0].method == "ekfac" and res[0].indices[0] == 5
    assert all(torch.equal(p, before[n]) for n, p in tiny_bridge.named_parameters())


def test_ekfac_bad_input(tiny_bridge):
    pytest.importorskip("kronfluence")
    with pytest.raises(ConfigError, match="needs tuples of 2 str"):
        influence.EKFACAttributor(tiny_bridge, [("a", "b", "c")])
    with pytest.raises(ConfigError, match="ref_model"):
        influence.EKFACAttributor(tiny_bridge, [("a", "b", "c")], loss="dpo")
    with pytest.raises(ConfigError, match="model="):
        make("ekfac", TRAIN)
