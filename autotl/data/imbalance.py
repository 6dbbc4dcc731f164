"""Class imbalance: when accuracy stops meaning what users think, say so once, before the search.

With one class five times the size of another, a model that favours the big
class scores a high accuracy while missing the small one; balanced accuracy
(the mean recall over classes) does not reward that, and ``class_weight:
balanced`` makes both training phases weigh every class the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from autotl.data.dataset import Dataset

__all__ = ["IMBALANCE_RATIO", "imbalance_warning"]

#: The largest class having this many times the training images of the smallest is imbalance.
IMBALANCE_RATIO = 5.0


def imbalance_warning(
    dataset: Dataset, objectives: Sequence[str], class_weight: Optional[str] = None
) -> Optional[str]:
    """A one-line warning when the training split is imbalanced and the search does not already
    optimise balanced accuracy; None otherwise."""
    counts = dataset.train.counts(dataset.n_classes)
    present = [(n, c) for n, c in zip(counts, dataset.class_names) if n > 0]
    if len(present) < 2:
        return None
    (small, small_name), (big, big_name) = min(present), max(present)
    if big < IMBALANCE_RATIO * small or "balanced_accuracy" in objectives:
        return None
    weights = "" if class_weight == "balanced" else " and class_weight: balanced"
    return (
        f"class imbalance: {big_name!r} has {big} training images, {small_name!r} {small} "
        f"({big / small:.1f}x), so accuracy rewards favouring {big_name!r}; search "
        f"balanced_accuracy instead (--objectives balanced_accuracy, or objectives: "
        f"[balanced_accuracy] in the space){weights}"
    )
