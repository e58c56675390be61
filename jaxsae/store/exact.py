"""Exact running sums of float64 values as non-overlapping expansions (Shewchuk), so that statistics of stores
(dataset parts) combine into bitwise those of one store holding all their rows.

A store's norm statistics are the exact sum of the float64 sums of its commits: each commit's sums are float64
(summed in blocks by the writer, as before), and adding them to the running total is exact (an expansion: a
short list of float64 "partials" whose exact sum is the total, Shewchuk's algorithm as in math.fsum). The
float64 statistics are that total correctly rounded (`math.fsum`). An extraction commits once per window of
cells, so a store and the parts it is cut into at window boundaries sum the same per-window float64 values,
and the exact totals, hence the rounded statistics, are bitwise equal however the windows were split.

PERFORMANCE: per commit, one expansion update per dimension in Python (7.8 ms per commit at d = 1,152, i.e. ~90
us per cell for a Geneformer V2 layer's three stores at 256 cells per commit); the per-row work is the writer's
float64 einsum, unchanged.
"""

from __future__ import annotations

import math

Expansion = tuple[float, ...]  # canonical float64 partials (see `grow`) whose exact sum is the value


def grow(partials: Expansion, values) -> Expansion:
    """The canonical expansion of sum(partials) + sum(values), exactly (values: finite float64 numbers).

    Canonical: the first partial is the exact value correctly rounded, the next one the remainder correctly
    rounded, and so on ((0.0,) for zero), so equal values have equal expansions whatever their history.
    """
    rest = _add(partials, values)
    canonical = []
    while (top := math.fsum(rest)) != 0.0:
        canonical.append(top)
        rest = _add(rest, (-top,))
    return tuple(canonical) or (0.0,)


def _add(partials, values) -> list[float]:
    """Shewchuk's non-overlapping partials of sum(partials) + sum(values) (math.fsum's inner loop), exact."""
    out = list(partials)
    for x in values:
        x = float(x)
        i = 0
        for y in out:
            if abs(x) < abs(y):
                x, y = y, x
            high = x + y
            low = y - (high - x)
            if low:
                out[i] = low
                i += 1
            x = high
        out[i:] = [x]
    return out


def value(partials: Expansion) -> float:
    """The expansion's exact sum, correctly rounded to float64 (its first partial)."""
    return partials[0]
