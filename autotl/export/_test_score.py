"""The exported model's test score: measured once, on images the search never saw, for ``parity.json`` and the card."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from autotl.data.holdout import holdout_score
from autotl.scoring.objective import trial_metrics

if TYPE_CHECKING:
    from autotl.data.dataset import Dataset
    from autotl.export._run import _Run


def test_split_score(
    model: Any, run: _Run, dataset: Dataset, size: tuple[int, int]
) -> dict[str, Any]:
    """Accuracy (with its 95% Wilson interval), balanced accuracy, macro F1 and log loss of ``model`` on
    the run's test split, beside the trial's validation accuracy; or why there is none."""
    validation = trial_metrics(run.trial).get("val_accuracy")
    if dataset.test is None:
        return {
            "skipped": "no test split (DATA_DIR/test/ or test_fraction in the search space)",
            "validation_accuracy": validation,
        }
    probs = np.concatenate(
        [np.asarray(model.predict_on_batch(b)) for b in dataset.test.batches(size, 32)]
    )
    out = holdout_score(probs, np.asarray(dataset.test.labels))
    out.update(split=dataset.test_split, validation_accuracy=validation)
    recorded = run.data_summary.get("test_fingerprint")
    if recorded and recorded != dataset.test_fingerprint:
        out["note"] = "the test images differ from the ones present at search time"
    return out
