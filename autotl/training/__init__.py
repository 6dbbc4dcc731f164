"""Training: the classifier, the frozen-feature cache, and the two phases.

:mod:`~autotl.training.model` builds the classifier (resize, preprocessing,
base, head) and owns the head and the block boundaries;
:mod:`~autotl.training.cache` computes the frozen base's activations once,
stored by :mod:`~autotl.training.npyfile`; :mod:`~autotl.training.fitting`
trains heads and top blocks on them; :mod:`~autotl.training.trainer` runs
phase 1, the gate and phase 2 with the rules enforced.  Nothing here imports
Optuna: a trial's values come in as plain parameters.
"""
