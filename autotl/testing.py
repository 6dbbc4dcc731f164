"""Contract checks for backbone plugins: what autotl assumes of every ``BackboneSpec``.

A plugin package runs them in its own tests, the way ``optuna.testing``
ships the checks every sampler must pass, so a wrong block pattern or a
preprocessing that differs from the backbone's own ``preprocess_input`` fails
in the plugin's CI rather than in somebody's trial 17::

    # tests/test_backbones.py of a plugin package
    import pytest

    from autotl.testing import backbone_params, check_backbone

    import my_package.backbones


    @pytest.mark.parametrize("spec", backbone_params(my_package.backbones))
    def test_backbone_contract(spec):
        check_backbone(spec)

:func:`check_backbone` builds the base with ``weights=None`` at a small size
(nothing is downloaded) and raises ``AssertionError`` naming the backbone and
the check at the first failure; it returns the checks that passed, one
``"ok: ..."`` line each.  :func:`check_preprocessing` is the cheap part of it
(no model is built), for every variant of a family whose base is checked once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any, NoReturn, Optional

from autotl.errors import first_line
from autotl.spec import BackboneSpec

__all__ = [
    "PREPROCESSING_RANGES",
    "backbone_params",
    "check_backbone",
    "check_preprocessing",
    "check_pretrained",
    "specs_of",
]

#: Where each ``keras.applications`` mode sends 0..255 pixels (each channel's image lies inside).
PREPROCESSING_RANGES: dict[str, tuple[float, float]] = {
    "none": (0.0, 255.0),
    "tf": (-1.0, 1.0),
    "torch": (-2.2, 2.7),
    "caffe": (-124.0, 152.0),
}
#: Sizes tried, in order, before the declared ones when ``check_backbone`` is given none: cheap to build.
CHEAP_SIZES: tuple[tuple[int, int], ...] = ((64, 64), (96, 96))
#: Largest difference allowed between two computations of the same tensor, relative to max(1, its largest value).
TOLERANCE = 1e-4


def _fail(spec: BackboneSpec, check: str, detail: str) -> NoReturn:
    raise AssertionError(f"backbone {getattr(spec, 'name', spec)!r}: {check}: {detail}")


def _first_line(exc: BaseException) -> str:
    """``Type: first line`` (just ``Type`` when the message is empty)."""
    return f"{type(exc).__name__}: {first_line(exc)}" if str(exc).strip() else type(exc).__name__


def _max_diff(a: Any, b: Any) -> float:
    import numpy as np

    a, b = np.asarray(a, dtype="float64"), np.asarray(b, dtype="float64")
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def _pixels(shape: tuple[int, ...], seed: int = 0) -> Any:
    """Random 0..255 float pixels whose first two rows hold the extremes 0 and 255 in every channel."""
    import numpy as np

    x = np.random.default_rng(seed).uniform(0.0, 255.0, size=shape).astype("float32")
    x[:, 0, ...] = 0.0
    x[:, 1, ...] = 255.0
    return x


def specs_of(*plugins: Any) -> list[BackboneSpec]:
    """The specs that ``plugins`` (modules, objects, or dotted module names) register, as autotl sees them.

    Each plugin is registered with a fresh plugin manager, so a hook function
    with a wrong name or signature fails here as it would at autotl start-up;
    specs are returned unchecked (``check_backbone`` checks them).
    """
    import pluggy

    from autotl import hookspec
    from autotl.backbones.registry import hook_items, import_plugin, register_plugin

    pm = pluggy.PluginManager(hookspec.PROJECT)
    pm.add_hookspecs(hookspec)
    for plugin in plugins:
        module = import_plugin(plugin) if isinstance(plugin, str) else plugin
        name = plugin if isinstance(plugin, str) else getattr(module, "__name__", repr(module))
        register_plugin(pm, module, name, f"plugin {name!r}")
    pm.check_pending()
    specs = []
    for impl in pm.hook.autotl_backbones.get_hookimpls():
        for spec in hook_items(impl.plugin_name, "autotl_backbones", BackboneSpec, impl.function):
            specs.append(replace(spec, plugin=impl.plugin_name))
    return specs


def backbone_params(*plugins: Any) -> list[Any]:
    """``pytest.param`` objects, one per spec of ``plugins``, identified by backbone name."""
    import pytest

    return [pytest.param(spec, id=spec.name) for spec in specs_of(*plugins)]


def check_preprocessing(
    spec: BackboneSpec, reference: Optional[Callable[[Any], Any]] = None
) -> list[str]:
    """Check the preprocessing autotl bakes into the model; no backbone is built.

    The layer from :func:`autotl.backbones.preprocess.preprocessing_layer` must compute
    ``spec.preprocessing.apply``, must equal ``reference`` (default:
    ``spec.preprocess_input``, when given) on the same random 0..255 pixels,
    and must send 0..255 into the range of its mode (``PREPROCESSING_RANGES``).
    ``reference`` gets a copy of the pixels: Keras' ``preprocess_input``
    changes float arrays in place.
    """
    from autotl.spec import Preprocessing

    p = spec.preprocessing
    if not isinstance(p, Preprocessing):
        _fail(
            spec, _CHECK, f"preprocessing must be an autotl.Preprocessing, got {type(p).__name__}"
        )
    x = _pixels((2, 8, 8, 3))
    baked, passed = _baked(spec, x)
    reference = reference if reference is not None else spec.preprocess_input
    if reference is not None:
        passed.append(_same_as_reference(spec, x, baked, reference))
    passed.append(_in_range(spec, baked))
    return passed


_CHECK = "preprocessing"


def _baked(spec: BackboneSpec, x: Any) -> tuple[Any, list[str]]:
    """What the baked-in layer gives pixels ``x``, checked against ``Preprocessing.apply``."""
    import numpy as np

    from autotl.backbones.preprocess import preprocessing_layer

    p = spec.preprocessing
    try:
        layer = preprocessing_layer(p)
        baked = x if layer is None else np.asarray(layer(x))
    except Exception as exc:
        _fail(spec, _CHECK, f"preprocessing_layer({p!r}) does not run: {_first_line(exc)}")
    if baked.shape != x.shape:
        _fail(spec, _CHECK, f"the baked-in layer maps pixels of shape {x.shape} to {baked.shape}")
    diff = _max_diff(baked, p.apply(x))
    if not diff <= TOLERANCE:
        _fail(
            spec,
            _CHECK,
            f"the baked-in layer differs from Preprocessing.apply by {diff:.3g} (> {TOLERANCE:g})",
        )
    kind = "identity" if layer is None else type(layer).__name__
    return baked, [
        f"ok: preprocessing {p.describe()} bakes into {kind}, equal to Preprocessing.apply"
    ]


def _same_as_reference(
    spec: BackboneSpec, x: Any, baked: Any, reference: Callable[[Any], Any]
) -> str:
    """The baked-in layer equals ``reference`` (the backbone's own ``preprocess_input``) on the same pixels."""
    import numpy as np

    try:
        expected = np.asarray(reference(x.copy()))
    except Exception as exc:
        _fail(
            spec,
            _CHECK,
            f"preprocess_input does not run on 0..255 float pixels: {_first_line(exc)}",
        )
    if expected.shape != x.shape:
        _fail(spec, _CHECK, f"preprocess_input maps pixels of shape {x.shape} to {expected.shape}")
    diff = _max_diff(baked, expected)
    if not diff <= TOLERANCE:
        _fail(
            spec,
            _CHECK,
            f"the baked-in {spec.preprocessing.describe()} differs from preprocess_input by {diff:.3g} (> {TOLERANCE:g}) "
            f"on the same pixels; preprocessing does not describe what preprocess_input does",
        )
    name = getattr(reference, "__qualname__", None) or type(reference).__name__
    return f"ok: baked-in preprocessing equals {getattr(reference, '__module__', '')}.{name} (max diff {diff:.1g})"


def _in_range(spec: BackboneSpec, baked: Any) -> str:
    """0..255 goes into the range of the preprocessing's mode (``PREPROCESSING_RANGES``), if it has one."""
    mode = spec.preprocessing.mode
    bounds = PREPROCESSING_RANGES.get(mode)
    if bounds is None:
        return f"ok: preprocessing mode {mode!r} has no known range; range not checked"
    low, high = float(baked.min()), float(baked.max())
    if low < bounds[0] - 1e-3 or high > bounds[1] + 1e-3:
        _fail(
            spec,
            _CHECK,
            f"mode {mode!r} must send 0..255 into [{bounds[0]:g}, {bounds[1]:g}], but it gives [{low:.4g}, {high:.4g}]",
        )
    return f"ok: 0..255 maps into [{low:.4g}, {high:.4g}], inside [{bounds[0]:g}, {bounds[1]:g}] for mode {mode!r}"


def _build(spec: BackboneSpec, size: Optional[tuple[int, int]]) -> tuple[Any, tuple[int, int]]:
    tried = [tuple(size)] if size is not None else [*CHEAP_SIZES, *sorted(spec.accepted_sizes)]
    errors = []
    for h, w in dict.fromkeys(tried):
        try:
            return spec.build((h, w, 3), None), (h, w)
        except Exception as exc:
            errors.append(f"at {h}x{w}: {_first_line(exc)}")
    _fail(spec, "build", "build(input_shape, weights=None) failed " + "; ".join(errors))


def _check_base(
    spec: BackboneSpec, base: Any, size: tuple[int, int], weights: str = "weights=None"
) -> tuple[Any, Any, str]:
    """Run the base on two preprocessed random images; return (input, output, ok line)."""
    import keras
    import numpy as np

    from autotl.backbones.preprocess import preprocessing_layer

    check = "build"
    if not isinstance(base, keras.Model):
        _fail(spec, check, f"build must return a keras.Model, got {type(base).__name__}")
    shape = tuple(base.input.shape) if not isinstance(base.input, (list, tuple)) else None
    if shape is None or len(shape) != 4 or tuple(shape[1:]) != (*size, 3):
        _fail(
            spec,
            check,
            f"the base must take one input of shape (batch, {size[0]}, {size[1]}, 3) when built at "
            f"input_shape={(*size, 3)}, got {shape if shape is not None else base.input}",
        )
    out = base.output
    if isinstance(out, (list, tuple, dict)) or len(out.shape) != 4 or not out.shape[-1]:
        _fail(
            spec,
            check,
            f"the base must output one feature map (batch, h, w, channels>0), got {getattr(out, 'shape', out)}: "
            f"build with include_top=False and no pooling",
        )
    layer = preprocessing_layer(spec.preprocessing)
    x = _pixels((2, *size, 3), seed=1)
    x = x if layer is None else np.asarray(layer(x))
    y = np.asarray(base(x, training=False))
    if y.ndim != 4 or y.shape[0] != 2 or min(y.shape) <= 0:
        _fail(spec, check, f"the base maps a batch of 2 images to shape {y.shape}")
    if not np.all(np.isfinite(y)):
        _fail(spec, check, "the base outputs non-finite values on preprocessed random pixels")
    return (
        x,
        y,
        f"ok: builds with {weights} at {size[0]}x{size[1]}: {len(base.layers)} layers, features {tuple(y.shape[1:])}",
    )


def _check_blocks(
    spec: BackboneSpec, base: Any, x: Any, y: Any, top: Optional[int] = None
) -> tuple[list[str], list[str]]:
    """Check the block boundaries of ``base`` (only the ``top`` highest, if given); return (ok lines, boundaries)."""
    check = "block_pattern"
    regex = re.compile(spec.block_pattern)
    names = [layer.name for layer in base.layers]
    matched = [n for n in names if regex.search(n)]
    if not matched:
        sample = ", ".join([*names[1:6], "...", *names[-3:]])
        _fail(
            spec,
            check,
            f"{spec.block_pattern!r} matches no layer of the base, whose layers are named like {sample}",
        )
    from autotl.training.model import block_boundaries

    boundaries = block_boundaries(base, spec.block_pattern)
    if not boundaries:
        return [
            f"ok: block_pattern matches {len(matched)} layers but none is a single-tensor cut: "
            f"no block boundaries, so autotl trains only the head (phase 2 skipped)"
        ], []
    checked = (
        boundaries
        if top is None
        else boundaries[max(len(boundaries) - top, 0) :]
        if top > 0
        else []
    )
    if checked:
        _check_cuts(spec, base, x, y, checked)
    which = "each" if checked == boundaries else f"the top {len(checked)} (all a search may use)"
    return [
        f"ok: {len(boundaries)} block boundaries ({boundaries[0]} ... {boundaries[-1]}), {which} a single-tensor "
        f"cut: top(bottom(x)) == base(x), with weights above the top one"
    ], boundaries


def _check_cuts(spec: BackboneSpec, base: Any, x: Any, y: Any, boundaries: list[str]) -> None:
    """Each boundary, bottom to top, is a single-tensor cut of ``base`` with weights above the top one.

    Checked segment by segment, in one forward pass: if each segment from a
    boundary to the next (and from the last to the output) is a model of its
    start alone and reproduces the next boundary's tensor, then the part
    above every boundary depends on that boundary alone and top(bottom(x))
    equals base(x) for each of them.
    """
    import keras

    check = "block boundaries"
    tensors = [base.get_layer(b).output for b in boundaries]
    feats = keras.Model(base.input, tensors)(x, training=False)
    feats = list(feats) if isinstance(feats, (list, tuple)) else [feats]
    ends = [*tensors[1:], base.output]
    expected = [*feats[1:], y]
    for i, b in enumerate(boundaries):
        try:
            segment = keras.Model(tensors[i], ends[i])
        except Exception as exc:
            _fail(
                spec,
                check,
                f"{b!r} is not a single-tensor cut: the part above it needs more than its output ({_first_line(exc)})",
            )
        diff = _max_diff(segment(feats[i], training=False), expected[i])
        if not diff <= TOLERANCE:
            _fail(
                spec,
                check,
                f"{b!r} is not a single-tensor cut: top(bottom(x)) differs from base(x) by {diff:.3g} (> {TOLERANCE:g})",
            )
    if not any(
        layer.weights and not isinstance(layer, keras.layers.BatchNormalization)
        for layer in segment.layers
    ):
        _fail(
            spec,
            check,
            f"no layer with weights (BatchNormalization aside) lies above {boundaries[-1]!r}: unfreezing from it would train nothing",
        )


def _check_stable_names(
    spec: BackboneSpec, base: Any, size: tuple[int, int], boundaries: list[str]
) -> str:
    """A second build must name the boundaries and the layers with weights as the first did.

    autotl keys cached features by boundary name and stores the layers a trial
    trained by name, but Keras names an unnamed layer by a process-wide counter
    (``conv2d_93``), which moves with every model built before.
    """
    from autotl.training.model import block_boundaries

    again = spec.build((*size, 3), None)
    check = "layer names"
    first = [layer.name for layer in base.layers if layer.weights]
    second = [layer.name for layer in again.layers if layer.weights]
    changed = [(a, b) for a, b in zip(first, second) if a != b] or (
        [] if len(first) == len(second) else [(len(first), len(second))]
    )
    if changed:
        _fail(
            spec,
            check,
            f"layers with weights are named differently in a second build ({', '.join(f'{a} -> {b}' for a, b in changed[:3])}"
            f"{', ...' if len(changed) > 3 else ''}): Keras names unnamed layers by a process-wide counter, and "
            f"autotl stores trained layers by name; name them in build",
        )
    if block_boundaries(again, spec.block_pattern) != boundaries:
        _fail(
            spec,
            check,
            f"the block boundaries are named differently in a second build ({boundaries[:3]} ... then "
            f"{block_boundaries(again, spec.block_pattern)[:3]} ...): Keras names unnamed layers by a "
            f"process-wide counter, and autotl keys cached features by boundary name; match named layers, or name them in build",
        )
    return f"ok: a second build names the {len(first)} layers with weights and the {len(boundaries)} boundaries the same"


def check_backbone(spec: BackboneSpec, size: Optional[tuple[int, int]] = None) -> list[str]:
    """Check ``spec`` against the plugin contract; return the passed checks, raise ``AssertionError`` at the first failure.

    1. ``spec.validate()`` finds no problem;
    2. the preprocessing, see :func:`check_preprocessing` (cheap, so first);
    3. ``spec.build`` returns, with ``weights=None`` at ``size``, a model taking
       (batch, h, w, 3) and giving a 4-D feature map (``include_top=False``).
       Without ``size``, the first of 64x64, 96x96 and then the declared sizes
       that builds is used, to stay cheap;
    4. ``block_pattern`` matches some layer, and every block boundary (see
       :func:`autotl.training.model.block_boundaries`) is a single-tensor cut with weights
       above it: ``top(bottom(x))`` equals ``base(x)`` on a random batch of two.
       A pattern that matches layers but no cut is allowed: autotl then trains
       only the head on this backbone;
    5. a second build names the boundaries and every layer with weights as the
       first did: autotl keys cached features by boundary name and stores
       trained layers by name, and Keras names unnamed layers by a
       process-wide counter (``conv2d_93``).
    """
    problems = (
        spec.validate()
        if isinstance(spec, BackboneSpec)
        else [f"not a BackboneSpec: {type(spec).__name__}"]
    )
    if problems:
        _fail(spec, "fields", "; ".join(problems))
    passed = ["ok: spec.validate() finds no problem"]
    passed += check_preprocessing(spec)
    base, built_at = _build(spec, size)
    x, y, line = _check_base(spec, base, built_at)
    passed.append(line)
    lines, boundaries = _check_blocks(spec, base, x, y)
    passed += lines
    passed.append(_check_stable_names(spec, base, built_at, boundaries))
    return passed


def check_pretrained(
    spec: BackboneSpec, source: Any, seed: int = 0, blocks: Optional[int] = None
) -> tuple[Any, list[str]]:
    """The cheap checks on the base a search would use: built at ``input_size`` with the weights of ``source``.

    ``source`` is an :class:`autotl.backbones.weights.WeightsSource`.  The weight file's
    hash (``SHA256SUMS`` or the spec's) and format (its ending and first bytes)
    are checked, the file is loaded by ``build``, and the base is checked as
    :func:`check_backbone` checks it: preprocessing equal to
    ``preprocess_input``, one 4-D output, finite features, block boundaries
    that are single-tensor cuts (only the ``blocks`` highest, if given: those a
    search may unfreeze).  Returns ``(base, passed lines)``; a failed check
    raises ``AssertionError``, weights that cannot be had raise
    :class:`autotl.UsageError` (``WeightsMissing``, ``WeightsMismatch``).
    """
    from autotl.backbones.weights import resolve_weights, weight_file_problem
    from autotl.errors import TrialFailed
    from autotl.training.model import build_base

    problems = spec.validate()
    if problems:
        _fail(spec, "fields", "; ".join(problems))
    resolved = resolve_weights(spec, source)
    passed = []
    if source.kind == "dir" and resolved.argument is not None:
        problem = weight_file_problem(resolved.argument)
        if problem:
            _fail(spec, "weights file", problem)
        passed.append(
            f"ok: weights file {resolved.origin} (sha256 {(resolved.sha256 or '')[:12]}...)"
        )
    passed += check_preprocessing(spec)
    try:
        base = build_base(spec, resolved, seed=seed)
    except TrialFailed as exc:
        _fail(spec, "build", f"{exc} (weights: {resolved.origin})")
    size = (spec.input_size[0], spec.input_size[1])
    x, y, line = _check_base(spec, base, size, f"weights {resolved.origin}")
    passed.append(line)
    lines, _ = _check_blocks(spec, base, x, y, top=blocks)
    return base, passed + lines
