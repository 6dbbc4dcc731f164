"""The search: what to try, and the engines that try it.

:mod:`~autotl.engine.space` reads YAML search spaces and turns a trial into
parameters; :mod:`~autotl.engine.samplers` holds Optuna's samplers by name;
:mod:`~autotl.engine.pick` chooses a trial by a condition;
:mod:`~autotl.engine.failures` says when a search gives up;
:mod:`~autotl.engine.prechecks` checks a backbone before its first trial;
:mod:`~autotl.engine.refit` trains a finished trial again from the cache (an ensemble's member whose
layers were not kept), checked against its record.
The engines: :mod:`~autotl.engine.optuna_engine` (the study, two-stage search,
workers) and :mod:`~autotl.engine.keras_tuner` (a keras-tuner ``HyperModel``,
its trials mirrored into a study by :mod:`~autotl.engine.keras_tuner_study`).
"""
