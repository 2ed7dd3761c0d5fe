"""The diagnose chain's ``selective`` edit: its first round is the chain's forget set (not
attributed again) with the ``unlearn`` variant's retain sample (the example model)."""

from __future__ import annotations

import pytest

from mechunlearn.studies.diagnose import DiagnoseConfig, diagnose

pytestmark = pytest.mark.usefixtures("one_thread")


def test_chain_selective_reuses_the_attribution_and_the_retain_sample(tmp_path, monkeypatch):
    import mechunlearn.studies.edits as E
    import mechunlearn.unlearn as U
    import mechunlearn.unlearn.selective as S
    from mechunlearn.models import load_bridge
    from mechunlearn.studies.example import make_example

    ex = make_example(tmp_path / "example")
    model = load_bridge(ex / "tuned")
    rounds, calls, kw, plans = [], [], {}, []
    real_sf, real_unlearn, real_att, real_keep = (U.selective_forget, S.unlearn, E._attribute,
                                                  E.keep_rows)

    def sf(model, train, *a, **k):
        kw.update(k)
        return real_sf(model, train, *a, **k)

    def unlearn(model, forget, retain, *a, **k):
        rounds.append(([x.id for x in forget], [x.id for x in retain]))
        return real_unlearn(model, forget, retain, *a, **k)

    def attribute(plan):
        plans.append(plan)
        f = real_att(plan)
        return lambda m, q: calls.append(len(q)) or f(m, q)

    monkeypatch.setattr(U, "selective_forget", sf)
    monkeypatch.setattr(S, "unlearn", unlearn)
    monkeypatch.setattr(E, "_attribute", attribute)
    res = diagnose(model, ex / "train.jsonl", ex / "bad.jsonl", judge="fool",
                   ordinary=ex / "ordinary.jsonl",
                   config=DiagnoseConfig(layers=(1,), gradients=False, methods=("selective",),
                                         n_permutations=0, robustness=False))
    assert res.edits.set_index("variant").loc["selective"].status == "measured"
    plan = plans[0]
    train = list(plan.train)
    assert kw["first_attribution"] == plan.forget and plan.forget
    assert kw["retain_rows"] == real_keep(plan)
    # round 1 unlearns the chain's forget set with the unlearn variant's retain sample ...
    assert rounds[0][0] == [train[i].id for i in plan.forget]
    assert rounds[0][1] == [train[i].id for i in real_keep(plan)]
    # ... and only later rounds attribute (a recomputed first round would call it once more)
    assert len(calls) == len(rounds) - 1
