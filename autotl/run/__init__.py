"""A run's persistence: its folder, its study's database, its artifacts and lineage.

:mod:`~autotl.run.folder` owns every path in a run folder and writes it
atomically; :mod:`~autotl.run.storage` opens the study's storage;
:mod:`~autotl.run.artifacts` stores trials' layers, best models and exports
(the run folder or S3, through ``optuna.artifacts``);
:mod:`~autotl.run.lineage` records in SQL which trial, backbone, weights and
data made a model file; :mod:`~autotl.run.trial_models` assembles a trial's
deployable model from what it stored.
"""
