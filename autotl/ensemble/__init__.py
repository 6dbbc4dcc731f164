"""Ensembles: the search's top trials combined into one model by ensemble selection.

The modules, bottom up: :mod:`~autotl.ensemble.caruana` (the selection
algorithm, on arrays), :mod:`~autotl.ensemble.model` (one Keras model out of
several, with optional flip TTA), :mod:`~autotl.ensemble.predictions` (the
members' cached probabilities), :mod:`~autotl.ensemble.record` (what was chosen
and measured, and its file), and ``_ensemble`` (the steps, re-exported here).
"""

from autotl.ensemble._ensemble import (
    BEST,
    DEFAULT_TOP_K,
    ENSEMBLE,
    EnsembleSelection,
    Score,
    Variant,
    build_model,
    candidates,
    current_selection,
    load_selection,
    member_scores,
    mix,
    save_selection,
    select_ensemble,
    space_top_k,
    trial_variant,
    variant_model,
    variant_name,
)

__all__ = [
    "DEFAULT_TOP_K",
    "mix",
    "build_model",
    "current_selection",
    "save_selection",
    "space_top_k",
    "variant_name",
    "trial_variant",
    "member_scores",
    "BEST",
    "ENSEMBLE",
    "Score",
    "Variant",
    "EnsembleSelection",
    "candidates",
    "select_ensemble",
    "load_selection",
    "variant_model",
]
