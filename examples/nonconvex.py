"""
Title: The homotopy method on a highly non-convex function
Description: The paper's §4.1 benchmark: quasi-Newton against the homotopy
quasi-Newton method on eq. (33), and what the anchor does.

The test function (Chow et al. 2013) has about 5ⁿ local minima in |xᵢ| < 10
and one global minimum at x = 1. Plain BFGS finds it only from starts in its
basin. The homotopy method doubles the variables into twins x and y, pins
half of each twin to an anchor with weight L, couples the twins with weight
1/L, and walks L from 0.9 down to 0.1 before a final plain solve.

Run: python examples/nonconvex.py
"""

import numpy as np

from keras_hta import schedules
from keras_hta.experiments import nonconvex

# The function and its analytic gradient agree with finite differences.
x = np.array([5.0, 4.0, 5.0, 5.0])
h = 1e-6
numeric = [(nonconvex.function(x + h * e) - nonconvex.function(x - h * e)) / (2 * h) for e in np.eye(4)]
print("gradient check, max error:", np.abs(nonconvex.gradient(x) - numeric).max())

# The paper's worked example: n = 4, start [5, 4, 5, 5].
plain = nonconvex.solve_bfgs(x)
print("BFGS from", x, "->", plain.round(3), "global" if nonconvex.is_global_minimum(plain) else "local")
schedule = schedules.Linear(0.9, 0.1, -0.1)  # the paper's L values
for anchor in ("init", "zeros"):
    result = nonconvex.solve_homotopy(x, schedule, anchor=anchor)
    verdict = "global" if nonconvex.is_global_minimum(result) else "local"
    print(f"homotopy, anchor={anchor!r}:", result.round(3), verdict)

# Table 1, n = 2: every start of the grid {0, ..., 5}².
starts = nonconvex.paper_starts(2)
print("n=2 starts:", len(starts))
print("  BFGS reaches x = 1 from", nonconvex.count_global_minima(starts, "bfgs").sum())
for anchor in ("init", "zeros", -2.0):
    found = nonconvex.count_global_minima(starts, "homotopy", schedule, anchor).sum()
    print(f"  homotopy, anchor={anchor!r}:", found)
# The paper's procedure (§1, step 1): the twins start at the solutions of the
# decoupled half-problems at the anchor, then L walks down. And its control:
# plain BFGS from each start with x's anchored half (the first) set to 0.
found = nonconvex.count_global_minima(starts, "homotopy", schedule, "zeros", start="decoupled").sum()
print("  homotopy, anchor='zeros', decoupled solves first:", found)
print("  control, BFGS with the first half at 0:", nonconvex.count_global_minima(starts, "control", anchor="zeros").sum())
print("  the paper reports", nonconvex.PAPER_TABLE1[2])

# Anchored at the initial guess, the twins start at their anchors and the
# homotopy follows BFGS into the same basin. Anchored at 0 (or below the
# global minimum), the pull drags coordinates from the basin near 5 across
# the barrier near 3 into the basin of 1. With the decoupled solves first the
# count is the paper's, and the control, which has no homotopy path at all,
# finds the same: on this grid the anchor's position, not the homotopy
# itself, makes the difference (benchmarks/RESULTS.md §1).
