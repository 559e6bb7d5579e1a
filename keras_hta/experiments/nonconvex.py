"""The paper's non-convex benchmark (§4.1): eq. (33) and the homotopy of eq. (35).

    f(x) = (π/n)·{k·sin²(πy₁) + Σ_{i<n} (y_i − A)²·[1 + k·sin²(πy_{i+1})] + (y_n − A)²},
    y_i = 1 + (x_i − 1)/4,  k = 10, A = 1,

has about 5ⁿ local minima in |x_i| < 10 and one global minimum, x = 1, f = 0.
The homotopy quasi-Newton method minimises, for each L of a schedule,

    F(x, y; L) = f(x) + L·‖x₁ − x̃₁‖² + f(y) + L·‖y₂ − ỹ₂‖² + (1/L)·‖x − y‖²

(x₁ the first ⌈n/2⌉ coordinates, y₂ the rest), warm-started from the last L,
and ends with a plain solve of f from x.

Two readings of where the twins start (`start=`): `"initial"`, both at the
initial guess; `"decoupled"`, the paper's first step (§1 eq. 2, §4.1 eq. 37):
the two half-problems with the anchored half held at the anchor are solved
first, and the L path starts from their solutions. `method="control"` is
plain BFGS from the initial guess with x's anchored half set to the anchor and
no homotopy at all: what the anchor's position alone does (with the anchor at
the initial guess it is plain BFGS itself).
"""

import numpy as np
from scipy import optimize

K, A = 10.0, 1.0


def function(x, k=K, a=A):
    """Eq. (33). `x`: array of shape (n,) or (batch, n); returns f per row."""
    x = np.asarray(x, dtype=float)
    n = x.shape[-1]
    y = 1.0 + (x - 1.0) / 4.0
    s = np.sin(np.pi * y) ** 2
    inner = np.sum((y[..., :-1] - a) ** 2 * (1.0 + k * s[..., 1:]), axis=-1)
    return (np.pi / n) * (k * s[..., 0] + inner + (y[..., -1] - a) ** 2)


def gradient(x, k=K, a=A):
    """The analytic gradient of `function`, same shape as `x`."""
    x = np.asarray(x, dtype=float)
    n = x.shape[-1]
    y = 1.0 + (x - 1.0) / 4.0
    s = np.sin(np.pi * y) ** 2
    ds = np.pi * np.sin(2.0 * np.pi * y)  # d sin²(πy)/dy
    g = np.zeros_like(y)
    g[..., 0] += k * ds[..., 0]
    g[..., :-1] += 2.0 * (y[..., :-1] - a) * (1.0 + k * s[..., 1:])
    g[..., 1:] += (y[..., :-1] - a) ** 2 * k * ds[..., 1:]
    g[..., -1] += 2.0 * (y[..., -1] - a)
    return (np.pi / n) * g / 4.0


# Table 1 of the paper: starts grid per n and the global minima found.
PAPER_TABLE1 = {
    2: {"grid": list(range(6)), "homotopy": 36, "bfgs": 24},
    4: {"grid": list(range(6)), "homotopy": 1296, "bfgs": 864},
    6: {"grid": [3, 4, 5, 6], "homotopy": 4096, "bfgs": 991},
}
ANCHORS = ("zeros", "init")
STARTS = ("initial", "decoupled")
METHODS = ("bfgs", "homotopy", "control", "control_second_half")
SUCCESS_TOL = 1e-3


def paper_starts(n, grid=None):
    """The starting points of Table 1: every point of `grid`ⁿ."""
    if grid is None:
        if n not in PAPER_TABLE1:
            raise ValueError(
                f"The paper gives no start grid for n={n}: pass `grid`. "
                f"Received: n={n}, grid=None"
            )
        grid = PAPER_TABLE1[n]["grid"]
    mesh = np.meshgrid(*[np.asarray(grid, float)] * n, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)


def is_global_minimum(x, tol=SUCCESS_TOL):
    """True where ‖x − 1‖∞ < tol: success, with our tolerance (the paper names the global minimum, no tolerance)."""
    return np.max(np.abs(np.asarray(x) - 1.0), axis=-1) < tol


def schedule_values(schedule, steps=None):
    """The distinct values of L a schedule takes, in order.

    Schedules with a `stop` (Linear, Geometric) run until they reach it;
    Piecewise runs through its values; any other callable needs `steps`.
    """
    if steps is None:
        if hasattr(schedule, "stop"):
            values = [schedule(0)]
            while values[-1] != schedule.stop and len(values) < 10_000:
                values.append(schedule(len(values) * getattr(schedule, "epochs_per_value", 1)))
            return values
        if hasattr(schedule, "values"):
            return list(schedule.values)
        raise ValueError(
            "Argument `steps` is needed for a schedule without `stop` or "
            f"`values`. Received: schedule={schedule!r}, steps=None"
        )
    return [schedule(p) for p in range(steps)]


def solve_bfgs(x0, path=None):
    """Plain quasi-Newton (scipy BFGS with the analytic gradient) from `x0`.

    Args:
        x0: Array of shape (n,).
        path: List or `None`; if given, every iterate is appended to it.
    """
    x0 = np.asarray(x0, float)
    callback = None if path is None else (lambda xk: path.append(np.copy(xk)))
    if path is not None:
        path.append(x0.copy())
    return optimize.minimize(function, x0, jac=gradient, method="BFGS", callback=callback).x


def _anchor_point(anchor, x0):
    if isinstance(anchor, (int, float)) and not isinstance(anchor, bool):
        return np.full_like(x0, float(anchor))
    if isinstance(anchor, str):
        if anchor == "zeros":
            return np.zeros_like(x0)
        if anchor == "init":
            return x0.copy()
        raise ValueError(f"Argument `anchor` must be one of {ANCHORS} or an array. Received: anchor={anchor!r}")
    point = np.asarray(anchor(x0) if callable(anchor) else anchor, float)
    if point.shape != x0.shape:
        raise ValueError(f"Argument `anchor` must have shape {x0.shape}. Received: shape {point.shape}")
    return point


def _minimise_part(x, free):
    """`x` with the coordinates `free` (a slice) moved to a BFGS minimum of f, the others held."""
    if free.start == free.stop:
        return x

    def part(v):
        z = x.copy()
        z[free] = v
        return function(z), gradient(z)[free]

    out = x.copy()
    out[free] = optimize.minimize(part, x[free], jac=True, method="BFGS").x
    return out


def solve_decoupled(x0, anchor="zeros"):
    """The paper's first step (§1 eq. 2; eq. 37, F at L → ∞): the two decoupled half-problems.

    x holds its first ⌈n/2⌉ coordinates at the anchor and minimises f over
    the rest from x0's; y holds its last coordinates at the anchor and
    minimises over its first ⌈n/2⌉ from x0's.

    Returns:
        `(x, y)`, two arrays of shape (n,).
    """
    x0 = np.asarray(x0, float)
    point = _anchor_point(anchor, x0)
    n1, n = (len(x0) + 1) // 2, len(x0)
    x = np.concatenate([point[:n1], x0[n1:]])
    y = np.concatenate([x0[:n1], point[n1:]])
    return _minimise_part(x, slice(n1, n)), _minimise_part(y, slice(0, n1))


def solve_control(x0, anchor="zeros", path=None, half="first"):
    """Plain BFGS from x0 with x's anchored coordinates (the first ⌈n/2⌉) set to the anchor; no homotopy.

    `half="second"` sets y's anchored coordinates (the rest) instead. With
    `anchor="init"` either is `solve_bfgs(x0)`.
    """
    x0 = np.asarray(x0, float)
    point = _anchor_point(anchor, x0)
    n1 = (len(x0) + 1) // 2
    start = np.concatenate([point[:n1], x0[n1:]] if half == "first" else [x0[:n1], point[n1:]])
    return solve_bfgs(start, path)


def homotopy_objective(z, L, anchor, n1):
    """F(x, y; L) of eq. (35) and its gradient, z = (x, y)."""
    n = len(anchor)
    x, y = z[:n], z[n:]
    dx1, dy2, d = x[:n1] - anchor[:n1], y[n1:] - anchor[n1:], x - y
    value = function(x) + function(y) + L * (dx1 @ dx1 + dy2 @ dy2) + (d @ d) / L
    gx, gy = gradient(x) + 2 * d / L, gradient(y) - 2 * d / L
    gx[:n1] += 2 * L * dx1
    gy[n1:] += 2 * L * dy2
    return value, np.concatenate([gx, gy])


def solve_homotopy(x0, schedule=None, anchor="zeros", steps=None, final=True, path=None, start="initial"):
    """Homotopy quasi-Newton (eq. 35) from `x0`.

    x is anchored on its first ⌈n/2⌉ coordinates, y on the rest. The twins
    start at `x0` (`start="initial"`) or at the solutions of the decoupled
    half-problems (`start="decoupled"`, the paper's procedure). For each L of
    `schedule` (default: the paper's 0.9 → 0.1 by 0.1) F is minimised by
    BFGS, warm-started from the last L; then f is minimised from x.

    Args:
        x0: Array of shape (n,), the initial guess.
        schedule: A `keras_hta.schedules` object or callable; default
            `Linear(0.9, 0.1, -0.1)`.
        anchor: `"zeros"` (default: x̃ = 0, the variant that finds the
            global minimum far more often; see benchmarks/RESULTS.md),
            `"init"` (x̃ = x0, as the paper's §4.1 reads), a number c
            (x̃ = c·1), a callable `x0 -> point` or an array.
        steps: Integer, the number of schedule positions, for schedules
            without a `stop`.
        final: Boolean, end with a plain BFGS solve of f from x.
        path: List or `None`; if given, x of every iterate is appended.
        start: `"initial"` (default) or `"decoupled"`, where the twins start.

    Returns:
        The final x, an array of shape (n,).
    """
    from keras_hta import schedules as schedules_lib

    if start not in STARTS:
        raise ValueError(f"Argument `start` must be one of {STARTS}. Received: start={start!r}")
    x0 = np.asarray(x0, float)
    schedule = schedules_lib.Linear(0.9, 0.1, -0.1) if schedule is None else schedule
    point = _anchor_point(anchor, x0)
    n1 = (len(x0) + 1) // 2
    n = len(x0)
    z = np.concatenate([x0, x0] if start == "initial" else solve_decoupled(x0, point))
    callback = None if path is None else (lambda zk: path.append(np.copy(zk[:n])))
    if path is not None:
        path.append(x0.copy())
    for L in schedule_values(schedule, steps):
        z = optimize.minimize(
            homotopy_objective, z, args=(L, point, n1), jac=True, method="BFGS", callback=callback
        ).x
    x = z[:n]
    return solve_bfgs(x, path) if final else x


def _solve_start(job):
    method, x0, schedule, anchor, start = job
    if method == "bfgs":
        x = solve_bfgs(x0)
    elif method.startswith("control"):
        x = solve_control(x0, anchor, half="first" if method == "control" else "second")
    else:
        x = solve_homotopy(x0, schedule, anchor, start=start)
    return bool(is_global_minimum(x))


def _quiet_worker():
    """A pool worker leaves Ctrl-C to the parent, and ends without a word when the pool terminates it.

    Forked workers inherit the command's handlers, which turn SIGTERM into the
    command's one-line exit: in a worker that would print a traceback each
    time the pool closes.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def count_global_minima(starts, method="bfgs", schedule=None, anchor="zeros", workers=None, progress=None,
                        start="initial"):
    """Counts the starts from which a solver reaches the global minimum.

    Args:
        starts: Array of shape (num_starts, n).
        method: `"bfgs"`, `"homotopy"`, `"control"` or `"control_second_half"`
            (`solve_control` with `half="first"` or `"second"`).
        schedule, anchor, start: As in `solve_homotopy` (`anchor` also for
            `"control"`).
        workers: Integer or `None` (all CPUs): processes to solve in.
        progress: Callable `done -> None` or `None`, called as starts finish.

    Returns:
        A boolean array, True where the start reached x = 1.
    """
    import multiprocessing
    import os

    if method not in METHODS:
        raise ValueError(f"Argument `method` must be one of {METHODS}. Received: method={method!r}")
    if start not in STARTS:
        raise ValueError(f"Argument `start` must be one of {STARTS}. Received: start={start!r}")
    jobs = [(method, s, schedule, anchor, start) for s in np.asarray(starts, float)]
    workers = workers or os.cpu_count() or 1
    results = []
    if workers == 1 or len(jobs) < 64:
        for job in jobs:
            results.append(_solve_start(job))
            if progress:
                progress(len(results))
        return np.array(results)
    with multiprocessing.get_context("fork").Pool(workers, initializer=_quiet_worker) as pool:
        for ok in pool.imap(_solve_start, jobs, chunksize=16):
            results.append(ok)
            if progress and len(results) % 16 == 0:
                progress(len(results))
    return np.array(results)


def arm_key(method, anchor=None, start="initial"):
    """The results key of one solver arm: `bfgs`, `homotopy_zeros`, `homotopy_decoupled_zeros`, `control_zeros`, ..."""
    if method == "bfgs":
        return "bfgs"
    if method == "homotopy" and start == "decoupled":
        return f"homotopy_decoupled_{anchor}"
    return f"{method}_{anchor}"


def arms(anchors):
    """`(method, anchor, start)` of every arm of Table 1 for `anchors`: BFGS, then per anchor both
    homotopy readings and the two controls."""
    out = [("bfgs", None, "initial")]
    for a in anchors:
        out += [("homotopy", a, "initial"), ("homotopy", a, "decoupled"), ("control", a, "initial"),
                ("control_second_half", a, "initial")]
    return out


TABLE1_COLUMNS = (
    ("BFGS", lambda r, a: r.get("bfgs")),
    ("BFGS (paper)", lambda r, a: r.get("paper_bfgs")),
    ("homotopy, twins at the start", lambda r, a: r.get(arm_key("homotopy", a))),
    ("homotopy, decoupled solves first (the paper's §1)", lambda r, a: r.get(arm_key("homotopy", a, "decoupled"))),
    ("control: BFGS, x's anchored half at the anchor", lambda r, a: r.get(arm_key("control", a))),
    ("control: BFGS, y's anchored half at the anchor", lambda r, a: r.get(arm_key("control_second_half", a))),
    ("homotopy (paper)", lambda r, a: r.get("paper_homotopy")),
)


def render_table1(result):
    """Table 1 as markdown, one row per n and anchor, from the result `keras-hta nonconvex --json` writes."""
    anchors = result["anchors"]
    header = ["n", "starts", "anchor"] + [name for name, _ in TABLE1_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in result["rows"]:
        for a in anchors:
            cells = [row["n"], row["starts"], a] + [get(row, a) for _, get in TABLE1_COLUMNS]
            lines.append("| " + " | ".join("-" if c is None else str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"
