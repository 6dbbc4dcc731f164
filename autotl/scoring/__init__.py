"""Scoring: what a search optimises and how a model's predictions become scores.

:mod:`~autotl.scoring.objective` defines every objective once (name, metric,
direction, constraints, the "best first" order, the Pareto front);
:mod:`~autotl.scoring.metrics` computes accuracy, balanced accuracy, macro F1
and log loss from probabilities; :mod:`~autotl.scoring.stats` gives their
intervals and paired tests.
"""
