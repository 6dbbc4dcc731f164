"""One trial's settings, and the rule between its two learning rates.

Kept apart from the trainer (which needs NumPy and, when it runs, TensorFlow) so a
search space can be read and checked, and ``autotl --help`` answer, without either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["TrialParams", "LR_RATIO"]

#: The fine-tuning learning rate must be at least this many times below phase 1's.
LR_RATIO = 10.0


@dataclass(frozen=True)
class TrialParams:
    """One trial's settings; the defaults follow the transfer-learning literature."""

    backbone: str
    head_width: int = 128
    dropout: float = 0.2
    unfreeze_blocks: int = 2  # 0: feature extraction only
    unfreeze_all: bool = False
    phase1_lr: float = 1e-3
    finetune_lr: float = 1e-5
    phase1_epochs: int = 100
    phase1_patience: int = 5
    phase2_epochs: int = 20
    phase2_patience: int = 3
    head_loss_threshold: float = 0.5
    batch_size: int = 32
    seed: int = 0
    prefetch_blocks: int = 0  # cache this many top boundaries in phase 1's forward pass
    class_weight: Optional[str] = None  # "balanced": each class weighs n / (classes * its count)
    # ... except the top ones a trial never cuts at (unfreeze_blocks.low)
    prefetch_min_blocks: int = 1

    def __post_init__(self) -> None:
        if self.finetune_lr * LR_RATIO > self.phase1_lr * (1 + 1e-9):
            raise ValueError(
                f"finetune_lr must be at least {LR_RATIO:g} times below phase1_lr, but got (finetune_lr={self.finetune_lr:g}, phase1_lr={self.phase1_lr:g})"
            )
