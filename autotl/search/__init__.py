"""The search: what to try, and the engines that try it.

:mod:`~autotl.search.space` reads YAML search spaces and turns a trial into
parameters; :mod:`~autotl.search.samplers` holds Optuna's samplers by name;
:mod:`~autotl.search.pick` chooses a trial by a condition;
:mod:`~autotl.search.failures` says when a search gives up;
:mod:`~autotl.search.prechecks` checks a backbone before its first trial.
The engines: :mod:`~autotl.search.optuna_engine` (the study, two-stage search,
workers) and :mod:`~autotl.search.keras_tuner` (a keras-tuner ``HyperModel``,
its trials mirrored into a study by :mod:`~autotl.search.keras_tuner_study`).
"""
