"""Data health: label errors, duplicates, leakage and outliers, found before they cost accuracy.

``autotl doctor DATA`` (:func:`autotl.api.doctor`), ``Run.data_issues()`` and a
section of every search's report run :func:`check_data`: one backbone's pooled
features for every image (read from the frozen-feature cache, or added to it),
then

* exact duplicates from the manifest's SHA-256, and near duplicates by cosine
  similarity of the features (an exact nearest-neighbour graph built in
  blocks, :mod:`._neighbours`, so memory stays flat); a pair spanning train,
  val and test is *leakage*, counted apart (:mod:`._duplicates`);
* label issues: cleanlab's ``find_label_issues`` on out-of-fold probabilities
  of K-fold heads on the features (:mod:`._labels`);
* outliers: cleanlab's out-of-distribution scores on the same graph, and what
  the manifest knows: unreadable files, tiny pictures, rare formats and
  colour modes (:mod:`._outliers`).

The result, :class:`DataHealth`, is written as ``issues.csv`` (one row per
finding: path, kind, score, the other file of a pair, the suggested label)
that ``autotl search --exclude`` reads.  Nothing in the data folder is ever
changed, moved or deleted.
"""

from autotl.health._check import GRAPHS, Settings, check_data, duplicates_only, find_findings
from autotl.health._duplicates import NEAR
from autotl.health._features import default_backbone, pooled_features
from autotl.health._findings import COLUMNS, KINDS, PAIR_KINDS, DataHealth, Finding
from autotl.health._labels import FOLDS
from autotl.health._subject import Subject, subject_of

__all__ = [
    "check_data",
    "GRAPHS",
    "Settings",
    "DataHealth",
    "Finding",
    "KINDS",
    "PAIR_KINDS",
    "COLUMNS",
    "NEAR",
    "FOLDS",
    "duplicates_only",
    "find_findings",
    "default_backbone",
    "pooled_features",
    "Subject",
    "subject_of",
]
