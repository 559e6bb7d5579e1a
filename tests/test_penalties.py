"""The anchor and coupling terms against numpy, safe l2 gradients, the exact
proximal step against a numeric minimiser, and the stability bound."""

import numpy as np
import pytest

import keras
from conftest import gradients
from reference import proximal_solve, proximal_solve_twins
from keras import ops
from keras_hta.penalties import homotopy_penalties, proximal_coefficients, proximal_update, proximal_update_weights

_np = ops.convert_to_numpy


def _t(array):
    return ops.convert_to_tensor(np.asarray(array))


def _setup(seed=0, twins=3):
    rng = np.random.default_rng(seed)
    shapes = [(3, 4), (4,)]
    ws = [[keras.Variable(rng.normal(size=s).astype("float32")) for s in shapes] for _ in range(twins)]
    anchors = [ops.convert_to_tensor(rng.normal(size=s).astype("float32")) for s in shapes]
    masks = [[ops.convert_to_tensor((rng.random(s) < 0.5).astype("float32")) for s in shapes] for _ in range(twins)]
    return ws, anchors, masks


def test_values_match_numpy():
    ws, anchors, masks = _setup()
    for norm, f in (("squared", lambda s: s), ("l2", np.sqrt)):
        anchor, coupling = homotopy_penalties(ws, anchors, masks, norm)
        want_a = sum(f(sum(np.sum((_np(m) * (_np(w) - _np(a))) ** 2) for w, a, m in zip(wk, anchors, mk)))
                     for wk, mk in zip(ws, masks))
        want_c = sum(f(sum(np.sum((_np(u) - _np(v)) ** 2) for u, v in zip(ws[j], ws[k])))
                     for j in range(3) for k in range(j + 1, 3))
        np.testing.assert_allclose(float(anchor), want_a, rtol=1e-5)
        np.testing.assert_allclose(float(coupling), want_c, rtol=1e-5)


def test_l2_gradient_is_finite_when_twins_are_equal():
    ws, anchors, masks = _setup(twins=2)
    for u, v in zip(ws[0], ws[1]):
        v.assign(u)
    anchors = [ops.convert_to_tensor(_np(w)) for w in ws[0]]

    def total():
        anchor, coupling = homotopy_penalties(ws, anchors, masks, "l2")
        return anchor + coupling

    for g in gradients(total, [w for wk in ws for w in wk]):
        np.testing.assert_array_equal(_np(g), 0.0)


def _objective(w, w_prime, free, gamma, L, anchor):
    """The per-element proximal objective of `proximal_update`'s docstring."""
    a = 1.0 - free
    m = len(w)
    coupling = sum((w[j] - w[k]) ** 2 for j in range(m) for k in range(j + 1, m))
    return 0.5 * np.sum((w - w_prime) ** 2) + gamma * (L * np.sum(a * (w - anchor) ** 2) + coupling / L)


@pytest.mark.parametrize("m", [2, 3, 4])
@pytest.mark.parametrize("with_anchor", [False, True])
def test_proximal_update_equals_numeric_minimiser(m, with_anchor):
    from scipy.optimize import minimize

    rng = np.random.default_rng(m)
    shape = (5, 3)
    values = [rng.normal(size=shape) for _ in range(m)]
    group = rng.integers(0, m, size=shape)  # which twin is free, per element
    free = [(group == k).astype("float64") for k in range(m)]
    anchor = rng.normal(size=shape) if with_anchor else np.zeros(shape)
    gamma, L = 0.3, 0.7
    got = proximal_update(
        [_t(v) for v in values], [_t(e) for e in free], gamma, L, _t(anchor) if with_anchor else None,
    )
    got = np.stack([_np(g) for g in got])
    for index in np.ndindex(shape):
        w_prime = np.array([v[index] for v in values])
        e = np.array([f[index] for f in free])
        best = minimize(_objective, w_prime, args=(w_prime, e, gamma, L, anchor[index]),
                        method="BFGS", options={"gtol": 1e-12})
        np.testing.assert_allclose(got[(slice(None),) + index], best.x, atol=1e-6)


def test_proximal_update_limits_in_l():
    rng = np.random.default_rng(0)
    values = [_t(rng.normal(size=(20,))) for _ in range(3)]
    group = rng.integers(0, 3, size=20)
    free = [_t((group == k).astype("float64")) for k in range(3)]
    anchor = _t(rng.normal(size=(20,)))
    mean = np.mean([_np(v) for v in values], axis=0)
    for w in proximal_update(values, free, 1.0, 1e-9, anchor):  # L → 0: twins equal their mean
        np.testing.assert_allclose(_np(w), mean, atol=1e-6)
    for k, w in enumerate(proximal_update(values, free, 1.0, 1e9, anchor)):  # L → ∞
        anchored = group != k
        np.testing.assert_allclose(_np(w)[anchored], _np(anchor)[anchored], atol=1e-6)


def test_penalty_curvature_and_sgd_limit():
    from keras_hta.penalties import penalty_curvature, sgd_divergence_limit

    for L in np.logspace(-5, 3, 17):  # the whole range of L: the closed form has no cancelling difference
        assert penalty_curvature(L) == pytest.approx(L + 2 / L + np.sqrt(L**2 + 4 / L**2), rel=1e-12)

    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    for L in np.logspace(-5, 3, 9):
        for m in (2, 3, 4):  # against the Hessian's eigenvalues at 40 digits
            hessian = mpmath.matrix(m, m)
            for i in range(m):
                for j in range(m):
                    hessian[i, j] = (2 / mpmath.mpf(L)) * ((m if i == j else 0) - 1)
                hessian[i, i] += 2 * mpmath.mpf(L) * (0 if i == 0 else 1)
            exact = max(mpmath.eigsy(hessian, eigvals_only=True))
            assert penalty_curvature(L, m) == pytest.approx(float(exact), rel=1e-12)
    assert sgd_divergence_limit(0.9) == pytest.approx(3.8)
    assert sgd_divergence_limit(0.9, nesterov=True) == pytest.approx(3.8 / 2.8)


C_GRID = np.logspace(-2, 6, 9)  # c = 2γ/L
L_GRID = np.logspace(-5, 3, 9)


@pytest.mark.parametrize("m", [2, 3, 4])
@pytest.mark.parametrize("with_anchor", [False, True])
def test_proximal_update_float32_equals_a_float64_solve_over_the_whole_range(m, with_anchor):
    # Every c from 1e-2 to 1e6 with every L from 1e-5 to 1e3 (γ = c·L/2, so d = 2γL runs
    # from 1e-12 to 1e12): the float32 closed form against a float64 solve of the same
    # (float32-rounded) inputs, normwise relative error over the twins.
    rng = np.random.default_rng(10 * m + with_anchor)
    shape = (6, 5)
    values = [rng.normal(size=shape).astype("float32") for _ in range(m)]
    group = rng.integers(0, m, size=shape)
    free = [(group == k).astype("float32") for k in range(m)]
    anchor = rng.normal(size=shape).astype("float32") if with_anchor else None
    worst = 0.0
    for c in C_GRID:
        for L in L_GRID:
            gamma = float(np.float32(c * L / 2))
            got = proximal_update(
                [ops.convert_to_tensor(v) for v in values], [ops.convert_to_tensor(e) for e in free],
                gamma, float(L), None if anchor is None else ops.convert_to_tensor(anchor),
            )
            got = np.stack([ops.convert_to_numpy(g) for g in got]).astype(np.float64)
            assert got.dtype == np.float64 and np.all(np.isfinite(got))
            want = proximal_solve(values, free, gamma, float(np.float32(L)), anchor)
            error = np.max(np.abs(got - want)) / np.max(np.abs(want))
            worst = max(worst, error)
            assert error <= 1e-6, f"c={c:g}, L={L:g}: relative error {error:.3g}"
    assert worst > 0  # the comparison saw float32 rounding, not two float64 evaluations


@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("with_anchor", [False, True])
def test_proximal_update_of_many_weights_at_once_equals_a_float64_solve(m, with_anchor):
    # The step's form: every weight of a step in one call (on PyTorch one foreach operation per
    # list), weights of different shapes, masks of full shape and broadcast per channel.
    rng = np.random.default_rng(m)
    shapes = [(3, 3, 2, 4), (4,), (5, 2)]
    groups = [rng.integers(0, m, size=(1, 1, 1, 4)), rng.integers(0, m, size=(4,)), rng.integers(0, m, size=(5, 2))]
    twins = [[rng.normal(size=s).astype("float32") for s in shapes] for _ in range(m)]
    anchors = [rng.normal(size=s).astype("float32") for s in shapes] if with_anchor else None
    gamma, L = 0.3, 0.7
    got = proximal_update_weights(
        [[_t(w) for w in ws] for ws in twins],
        [[_t((g == k).astype("float32")) for g in groups] for k in range(m)],
        None if anchors is None else [_t(a) for a in anchors],
        proximal_coefficients(gamma, L, m))
    want = proximal_solve_twins(twins, [[(g != k).astype("float64") for g in groups] for k in range(m)],
                                anchors, gamma, float(np.float32(L)))
    for k in range(m):
        for g, w in zip(got[k], want[k]):
            assert tuple(g.shape) == w.shape
            np.testing.assert_allclose(_np(g), w, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_proximal_update_of_half_precision_weights_runs_in_float32(dtype):
    rng = np.random.default_rng(0)
    values = [rng.normal(size=(4, 3)).astype("float32") for _ in range(2)]
    free = [np.array([1.0, 0.0, 1.0], "float32"), np.array([0.0, 1.0, 0.0], "float32")]
    half = [ops.cast(ops.convert_to_tensor(v), dtype) for v in values]
    stored = [ops.convert_to_numpy(ops.cast(h, "float32")) for h in half]
    gamma, L = 5.0, 1e-4  # c = 1e5: float16 arithmetic (max 65504) would overflow
    got = proximal_update(half, [ops.convert_to_tensor(e) for e in free], gamma, L)
    assert all(keras.backend.standardize_dtype(g.dtype) == dtype for g in got)
    want = proximal_solve(stored, free, gamma, float(np.float32(L)), None)
    want_rounded = ops.convert_to_numpy(ops.cast(ops.cast(ops.convert_to_tensor(want.astype("float32")), dtype), "float32"))
    for g, w in zip(got, want_rounded):  # the float32 result, rounded once to the storage dtype
        np.testing.assert_array_equal(ops.convert_to_numpy(ops.cast(g, "float32")), w)
