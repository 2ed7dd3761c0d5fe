"""Interventions: projection properties, serialisation, and equivalence inside a model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mechunlearn.directions import Directions, RankDeficientError, leace
from mechunlearn.errors import ConfigError, NonFiniteError, ShapeError
from mechunlearn.hooks import Compose, apply
from mechunlearn.interventions import (
    Clamp,
    Erase,
    Patch,
    Project,
    Steer,
    from_dict,
    load,
    save,
    to_dict,
)
from mechunlearn.sites import Site, resid

torch.set_num_threads(1)
SITE = resid(0, "post")


def rand_basis(seed: int, k: int, d: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, d, generator=g, dtype=torch.float64)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 4), d=st.integers(5, 24))
def test_projection_properties(seed, k, d):
    p = Project(rand_basis(seed, k, d), SITE)
    x = torch.randn(3, 7, d, generator=torch.Generator().manual_seed(seed + 1))
    y = p.edit(x)
    B = p.basis
    assert (y @ B.T).abs().max() <= 1e-6 * max(1.0, float(x.abs().max()))  # removed exactly
    torch.testing.assert_close(p.edit(y), y, atol=1e-5, rtol=1e-5)  # idempotent
    comp = x - (x @ B.T) @ B  # orthogonal complement part is unchanged
    torch.testing.assert_close(y, comp, atol=1e-5, rtol=1e-5)
    z = torch.randn(d, generator=torch.Generator().manual_seed(seed + 2))
    z_perp = z - (z @ B.T) @ B
    torch.testing.assert_close(p.edit(z_perp), z_perp, atol=1e-5, rtol=1e-5)


def test_seed_one_over_d_is_not_a_projection():
    """The seed's (I − ωωᵀ/d) leaves (1 − 1/d) of the component; ours removes it all."""
    d = 16
    w = torch.nn.functional.normalize(torch.randn(d), dim=0)
    x = 3 * w
    seed_version = x - (x @ w) * w / d
    assert float(seed_version @ w) == pytest.approx(3 * (1 - 1 / d), rel=1e-5)
    assert abs(float(Project(w, SITE).edit(x) @ w)) < 1e-6


def test_compose_of_orthogonal_projections_equals_union_projection():
    q, _ = torch.linalg.qr(torch.randn(12, 3, dtype=torch.float64))
    a, b = Project(q.T[:2], SITE), Project(q.T[2:], SITE)
    x = torch.randn(5, 4, 12)
    union = Project(q.T, SITE)
    torch.testing.assert_close(Compose(a, b).edit(x), union.edit(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(Project.union(a, b).edit(x), union.edit(x), atol=1e-5, rtol=1e-5)


def test_union_of_non_orthogonal_projections():
    a = Project(torch.tensor([1.0, 0, 0]), SITE)
    b = Project(torch.tensor([1.0, 1.0, 0]), SITE)
    x = torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(Project.union(a, b).edit(x), torch.tensor([0.0, 0.0, 3.0]))
    seq = Compose(a, b).edit(x)  # sequential projections are not the union projection
    assert abs(float(seq[0])) > 0.1


def test_steer_clamp_patch_semantics():
    d = 6
    u = torch.nn.functional.normalize(torch.randn(d), dim=0)
    x = torch.randn(2, 3, d, dtype=torch.float64)
    torch.testing.assert_close(Steer(u, 2.5, SITE).edit(x), x + 2.5 * u.double())
    c = Clamp(3 * u, 4.0, SITE).edit(x)
    torch.testing.assert_close(c @ u.double(), torch.full((2, 3), 4.0, dtype=torch.float64))
    assert c.dtype == torch.float64
    mean = torch.ones(d)
    torch.testing.assert_close(Patch(mean, SITE).edit(x), torch.ones_like(x))
    with pytest.raises(ShapeError):
        Patch(torch.ones(4), SITE).edit(x)


def test_erase_matches_leace_eraser():
    rng = np.random.default_rng(0)
    xp, xn = rng.normal(size=(60, 8)) + 1, rng.normal(size=(60, 8)) - 1
    dirs = leace(xp, xn, site=SITE, n_permutations=0, n_splits=3)
    x = torch.tensor(np.concatenate([xp, xn]))
    er = Erase(dirs)
    assert er.site == SITE
    torch.testing.assert_close(er.edit(x), dirs.eraser(x))
    torch.testing.assert_close(er.edit(x.float()), dirs.eraser(x).float(), atol=1e-5, rtol=1e-5)


def _examples():
    rng = np.random.default_rng(1)
    dirs = leace(rng.normal(size=(30, 5)) + 1, rng.normal(size=(30, 5)), site=SITE,
                 n_permutations=0, n_splits=3)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    mask[0, 1] = True
    return [
        Project(rand_basis(0, 2, 5), SITE, positions="response"),
        Steer(torch.randn(5), 0.5, Site("blocks.1.hook_resid_pre"), positions=(-1, 0)),
        Clamp(torch.randn(5), -1.0, SITE, positions=2),
        Erase(dirs),
        Patch(torch.randn(2, 3, 5), SITE, positions=mask),
    ]


@pytest.mark.parametrize("iv", _examples(), ids=lambda iv: type(iv).__name__)
def test_to_dict_roundtrip(iv):
    back = from_dict(to_dict(iv))
    assert type(back) is type(iv) and back.site == iv.site
    pos = iv.positions
    if isinstance(pos, torch.Tensor):
        assert torch.equal(back.positions, pos)
    else:
        assert back.positions == pos
    x = torch.randn(2, 3, 5)
    torch.testing.assert_close(back.edit(x), iv.edit(x))


def test_save_load_list_with_compose(tmp_path):
    ivs = _examples()
    items = [Compose(ivs[0], ivs[2]), *ivs[1:]]
    loaded = load(save(tmp_path / "ivs", items))
    assert isinstance(loaded[0], Compose) and len(loaded[0].parts) == 2
    x = torch.randn(2, 3, 5)
    for a, b in zip(items[1:], loaded[1:]):
        torch.testing.assert_close(a.edit(x), b.edit(x))
    torch.testing.assert_close(loaded[0].edit(x), items[0].edit(x))
    # hooks.Compose.to_dict uses the inline form
    torch.testing.assert_close(from_dict(items[0].to_dict()).edit(x), items[0].edit(x))


def test_bad_inputs_raise():
    with pytest.raises(ShapeError):
        Project(torch.zeros(2, 4), SITE)
    with pytest.raises(RankDeficientError):
        Project(torch.tensor([[1.0, 2.0], [2.0, 4.0]]), SITE)
    with pytest.raises(NonFiniteError):
        Steer(torch.tensor([1.0, float("inf")]), 1.0, SITE)
    with pytest.raises(ConfigError):
        Project(torch.ones(1, 4))  # no site
    with pytest.raises(ShapeError):
        Project(torch.ones(1, 4), SITE).edit(torch.ones(2, 3, 5))
    with pytest.raises(ConfigError):
        Erase(Directions(torch.ones(1, 4), site=SITE))  # not a LEACE result
    with pytest.raises(ConfigError):
        from_dict({"type": "Nope"})


def test_apply_projection_equals_patching_the_projected_cache(tiny_bridge):
    """Projection via apply() == running with the cached activation projected and patched in."""
    model = tiny_bridge
    tokens = torch.tensor([[5, 9, 17, 23, 41, 7], [3, 3, 60, 12, 8, 90]])
    site = resid(0, "post")
    d = model.cfg.d_model
    proj = Project(rand_basis(3, 2, d), site)
    with torch.no_grad():
        base, cache = model.run_with_cache(tokens)
        cached = cache[site.hook_name]
        with apply(model, proj):
            edited = model(tokens)
        with apply(model, Patch(proj.edit(cached), site)):
            patched = model(tokens)
    assert (edited - base).abs().max() > 1e-4  # the edit changes the output
    torch.testing.assert_close(edited, patched, atol=1e-5, rtol=1e-5)


def test_apply_projection_on_some_positions(tiny_bridge):
    model = tiny_bridge
    tokens = torch.tensor([[5, 9, 17, 23, 41, 7]])
    site = resid(1, "pre")
    basis = rand_basis(4, 1, model.cfg.d_model)
    seen = {}
    with torch.no_grad(), apply(model, Project(basis, site, positions=-1)):
        model.run_with_hooks(tokens, fwd_hooks=[(site.hook_name, lambda a, hook: seen.setdefault("a", a))])
    a = seen["a"][0]
    b = Project(basis, site).basis
    assert float((a[-1] @ b.T).abs().max()) < 1e-5
    assert float((a[:-1] @ b.T).abs().max()) > 1e-3


def test_head_site_edits_only_that_head():
    site = Site("blocks.0.attn.hook_z", head=1)
    u = torch.nn.functional.normalize(torch.randn(4), dim=0)
    act = torch.randn(2, 3, 2, 4)
    out = Project(u, site)(act)
    torch.testing.assert_close(out[:, :, 0], act[:, :, 0])
    assert float((out[:, :, 1] @ u).abs().max()) < 1e-6


def test_nested_apply_without_masks_keeps_the_outer_masks(tiny_bridge):
    """A nested ``apply`` without masks runs on the same forward pass: the outer block's
    response-only projection must keep acting on the response positions only."""
    model = tiny_bridge
    tokens = torch.tensor([[5, 9, 17, 23, 41, 7]])
    resp = torch.tensor([[False, False, False, True, True, True]])
    site, other = resid(1, "pre"), resid(0, "post")
    basis = rand_basis(5, 1, model.cfg.d_model)
    b = Project(basis, site).basis
    seen = {}
    outer = Project(basis, site, positions="response")
    inner = Steer(torch.zeros(model.cfg.d_model), 0.0, other)
    with torch.no_grad(), apply(model, outer, response_mask=resp), apply(model, inner):
        model.run_with_hooks(tokens, fwd_hooks=[(site.hook_name,
                                                 lambda a, hook: seen.setdefault("a", a))])
    a = seen["a"][0]
    assert float((a[3:] @ b.T).abs().max()) < 1e-5      # response: projected out
    assert float((a[:3] @ b.T).abs().max()) > 1e-3      # prompt: untouched
