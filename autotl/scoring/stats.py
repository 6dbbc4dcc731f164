"""Small statistics shared by reports and model cards."""

from __future__ import annotations

import math

__all__ = ["Z95", "wilson_interval"]

#: The two-sided 95% quantile of the standard normal distribution.
Z95 = 1.959963984540054


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``successes`` out of ``n`` (95% by default).

    ``successes`` may be fractional (``accuracy * n``); it is clamped to ``[0, n]``
    so float round-off never puts the proportion outside ``[0, 1]``.  With
    ``n`` 0 nothing was measured and the interval is the whole ``(0.0, 1.0)``.
    """
    if n <= 0:
        return 0.0, 1.0
    if successes is None or not math.isfinite(successes):
        raise ValueError(f"successes must be a finite number, got {successes!r}")
    p = min(max(float(successes) / n, 0.0), 1.0)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # the interval always holds p; min/max only undo floating-point round-off at p = 0 or 1
    return max(0.0, min(centre - half, p)), min(1.0, max(centre + half, p))
