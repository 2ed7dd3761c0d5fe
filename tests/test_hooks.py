"""apply(): hooks fire, never leak (also on exceptions), and compose in a defined order."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mechunlearn import (
    Compose,
    ConfigError,
    HookNotFiredError,
    Intervention,
    Site,
    UnknownHookError,
    apply,
    resid,
)
from mechunlearn.hooks import Positions


@dataclass(frozen=True)
class Add(Intervention):
    site: Site
    value: float
    positions: Positions = "all"

    def edit(self, x):
        return x + self.value


@dataclass(frozen=True)
class Scale(Intervention):
    site: Site
    value: float
    positions: Positions = "all"

    def edit(self, x):
        return x * self.value


def n_hooks(model) -> int:
    return sum(len(hp.fwd_hooks) + len(hp._forward_hooks) for hp in model.hook_dict.values())


def ids():
    return torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]]), torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])


def test_apply_changes_output_and_cleans_up(tiny_bridge):
    x, am = ids()
    base = tiny_bridge(x, attention_mask=am)
    before = n_hooks(tiny_bridge)
    with apply(tiny_bridge, Add(resid(1, "post"), 1.0)) as h:
        edited = tiny_bridge(x, attention_mask=am)
        assert n_hooks(tiny_bridge) > before
    assert h.fired[0] == 1
    assert n_hooks(tiny_bridge) == before
    assert not torch.allclose(base, edited)
    torch.testing.assert_close(tiny_bridge(x, attention_mask=am), base)


class Boom(Exception):
    pass


@settings(max_examples=15, deadline=None)
@given(where=st.sampled_from(["inside", "hook"]), kbi=st.booleans())
def test_hooks_never_leak_after_exception(tiny_bridge, where, kbi):
    x, am = ids()
    before = n_hooks(tiny_bridge)
    err = KeyboardInterrupt if kbi else Boom

    @dataclass(frozen=True)
    class Raise(Intervention):
        site: Site
        positions: Positions = "all"

        def edit(self, x):
            raise err()

    iv = Raise(resid(0, "pre")) if where == "hook" else Add(resid(0, "pre"), 1.0)
    with pytest.raises(err):
        with apply(tiny_bridge, iv, Add(resid(1, "post"), 2.0)):
            if where == "inside":
                raise err()
            tiny_bridge(x, attention_mask=am)
    assert n_hooks(tiny_bridge) == before


def test_user_hooks_survive(tiny_bridge):
    calls = []
    hp = tiny_bridge.hook_dict["blocks.0.hook_resid_post"]
    handle = hp.add_hook(lambda a, hook: calls.append(1))
    try:
        with apply(tiny_bridge, Add(resid(0, "post"), 1.0)):
            tiny_bridge(*ids()[:1])
        tiny_bridge(*ids()[:1])
        assert len(calls) == 2  # the user's hook ran both times and is still registered
    finally:
        handle.hook.remove()
        hp.fwd_hooks.remove(handle)


def test_unfired_hook_is_reported(tiny_bridge):
    with pytest.raises(HookNotFiredError, match="blocks.1.hook_resid_post"):
        with apply(tiny_bridge, Add(resid(1, "post"), 1.0)):
            tiny_bridge(ids()[0], stop_at_layer=1)
    with apply(tiny_bridge, Add(resid(1, "post"), 1.0), check_fired=False):
        tiny_bridge(ids()[0], stop_at_layer=1)
    with pytest.raises(HookNotFiredError):
        with apply(tiny_bridge, Add(resid(0, "post"), 1.0)):
            pass


def test_compose_order_is_listed_order(tiny_bridge):
    x, am = ids()
    s = resid(0, "post")
    captured = {}

    def run(*ivs):
        with apply(tiny_bridge, *ivs):
            _, cache = tiny_bridge.run_with_cache(x, attention_mask=am, names_filter=["blocks.1.hook_resid_pre"])
        return cache["blocks.1.hook_resid_pre"]

    _, cache = tiny_bridge.run_with_cache(x, attention_mask=am, names_filter=[s.hook_name])
    raw = cache[s.hook_name]
    a = run(Compose(Add(s, 1.0), Scale(s, 3.0)))
    b = run(Compose(Scale(s, 3.0), Add(s, 1.0)))
    torch.testing.assert_close(a, (raw + 1) * 3)
    torch.testing.assert_close(b, raw * 3 + 1)
    torch.testing.assert_close(Compose(Add(s, 1.0), Scale(s, 3.0)).edit(raw), (raw + 1) * 3)
    captured["ok"] = True
    with pytest.raises(ConfigError):
        Compose()
    with pytest.raises(ConfigError):
        Compose(Add(s, 1.0), Add(resid(1), 1.0)).edit(raw)


def test_positions(tiny_bridge):
    x, am = ids()
    s = resid(0, "post")
    with apply(tiny_bridge, Add(s, 0.0)):
        _, c0 = tiny_bridge.run_with_cache(x, attention_mask=am, names_filter=[s.hook_name])
    rm = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 0]]).bool()
    for positions, mask in [
        ("response", rm & am.bool()),
        ("prompt", ~rm & am.bool()),
        (-1, torch.tensor([[0, 0, 0, 1], [0, 0, 1, 0]]).bool()),
        ([0], torch.tensor([[1, 0, 0, 0], [1, 0, 0, 0]]).bool()),
    ]:
        with apply(tiny_bridge, Add(s, 5.0, positions=positions), attention_mask=am, response_mask=rm):
            _, c = tiny_bridge.run_with_cache(x, attention_mask=am, names_filter=[s.hook_name])
        diff = (c[s.hook_name] - c0[s.hook_name]).abs().amax(-1)
        assert torch.equal(diff > 1, mask), positions
    with pytest.raises(ConfigError):
        with apply(tiny_bridge, Add(s, 1.0, positions="response")):
            tiny_bridge(x)


def test_works_with_run_with_hooks_and_generate(tiny_bridge):
    x, am = ids()
    base = tiny_bridge(x, attention_mask=am)
    with apply(tiny_bridge, Add(resid(0, "post"), 1.0)) as h:
        out = tiny_bridge.run_with_hooks(x, attention_mask=am, fwd_hooks=[])
    assert h.fired[0] == 1 and not torch.allclose(out, base)
    with apply(tiny_bridge, Add(resid(0, "post"), 1.0)) as h:
        tiny_bridge.generate(x[:1], max_new_tokens=3, do_sample=False, verbose=False, stop_at_eos=False)
    assert h.fired[0] >= 1


def test_apply_validates_before_adding(tiny_bridge):
    before = n_hooks(tiny_bridge)
    with pytest.raises(UnknownHookError):
        with apply(tiny_bridge, Add(resid(0), 1.0), Add(Site("blocks.0.nope"), 1.0)):
            pass
    assert n_hooks(tiny_bridge) == before
    with pytest.raises(ConfigError):
        with apply(tiny_bridge, "not an intervention"):  # type: ignore[arg-type]
            pass
