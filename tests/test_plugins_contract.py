"""The built-in backbone plugins against the plugin contract (``autotl.testing``).

Everything builds with ``weights=None`` at small sizes, offline.  The full
contract check builds one variant per family; the cheap checks (fields,
preprocessing against ``keras.applications``, weight file names) run on every
variant.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import autotl.backbones.registry
from autotl import BackboneSpec, Preprocessing
from autotl.testing import backbone_params, check_backbone, check_preprocessing, specs_of

BACKBONE_MODULES = tuple(
    m for m in autotl.backbones.registry.DEFAULT_PLUGINS if m != "autotl_plugins.digits"
)
SPECS = specs_of(*BACKBONE_MODULES)
BY_NAME = {spec.name: spec for spec in SPECS}
FAMILIES: dict[str, BackboneSpec] = {}
for _spec in SPECS:
    FAMILIES.setdefault(_spec.family, _spec)  # the first variant of each family
SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights"

EXPECTED_NAMES = {
    *(f"mobilenet-{a}" for a in ("0.25", "0.5", "0.75", "1.0")),
    *(f"mobilenet_v2-{a}" for a in ("0.35", "0.5", "0.75", "1.0", "1.3", "1.4")),
    *(
        f"mobilenet_v3_{kind}-{variant}{pre}"
        for kind in ("small", "large")
        for variant in ("0.75", "1.0", "1.0-minimalistic")
        for pre in ("", "-nopre")
    ),
    *(f"efficientnet_{b}" for b in ("b0", "b1", "b2", "b3")),
    *(f"efficientnet_v2_{b}" for b in ("b0", "b1", "b2", "b3")),
    "resnet50",
    "resnet50_v2",
    "densenet121",
    "nasnet_mobile",
    "xception",
    "inception_v3",
    "convnext_tiny",
}


def keras_preprocess_input(spec: BackboneSpec):
    """The ``keras.applications.<module>.preprocess_input`` that ``spec``'s preprocessing must reproduce."""
    import keras

    apps = keras.applications
    if spec.name.startswith("mobilenet_v3") and spec.name.endswith("-nopre"):
        # mobilenet_v3.preprocess_input is a pass-through; without the model's own
        # Rescaling(1/127.5, -1) the pixels need what it did: mode "tf".
        return lambda x: apps.imagenet_utils.preprocess_input(x, mode="tf")
    module = {
        "MobileNet": apps.mobilenet,
        "MobileNetV2": apps.mobilenet_v2,
        "MobileNetV3": apps.mobilenet_v3,
        "EfficientNet": apps.efficientnet,
        "EfficientNetV2": apps.efficientnet_v2,
        "ResNet": apps.resnet50,
        "ResNetV2": apps.resnet_v2,
        "DenseNet": apps.densenet,
        "NASNet": apps.nasnet,
        "Xception": apps.xception,
        "InceptionV3": apps.inception_v3,
        "ConvNeXt": apps.convnext,
    }[spec.family]
    return module.preprocess_input


# --- the registry and the modules ------------------------------------------


def test_registry_collects_every_builtin_backbone(monkeypatch):
    monkeypatch.setattr(
        autotl.backbones.registry, "DEFAULT_PLUGINS", (*BACKBONE_MODULES, "autotl_plugins.digits")
    )
    registry = autotl.backbones.registry.get_registry(autoload=False)
    assert set(registry.backbones) == EXPECTED_NAMES
    for spec in registry.backbones.values():
        assert (
            spec.plugin == getattr(spec.build, "func", spec.build).__module__
        )  # each plugin registers its own


def test_plugin_modules_do_not_import_keras():
    code = (
        "import sys; import " + ", ".join(BACKBONE_MODULES) + "; import autotl.testing; "
        "loaded = [m for m in ('keras', 'tensorflow') if m in sys.modules]; assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- every variant, cheaply ------------------------------------------------


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_spec_fields(spec):
    assert spec.validate() == []
    assert spec.name == spec.name.lower() and spec.family and spec.description
    assert spec.weights_file and spec.weights_file.endswith(".h5")
    assert spec.input_size in spec.accepted_sizes
    assert spec.preprocess_input is not None


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_preprocessing_equals_keras_preprocess_input(spec):
    """The baked-in preprocessing gives the same tensor as keras.applications.<module>.preprocess_input."""
    passed = check_preprocessing(spec, reference=keras_preprocess_input(spec))
    assert any("equals" in line for line in passed)
    check_preprocessing(spec)  # and the plugin's own preprocess_input is that same function
    if spec.preprocessing.mode == "none":
        x = np.random.default_rng(0).uniform(0, 255, (2, 5, 5, 3)).astype("float32")
        np.testing.assert_array_equal(np.asarray(keras_preprocess_input(spec)(x.copy())), x)
        assert spec.preprocessing.is_identity


class _Requested(Exception):
    """Raised by a stand-in for Keras' ``get_file``: what Keras would have downloaded."""


@pytest.mark.parametrize(
    "spec",
    # the MobileNets in the inner loop (make test-fast); every other family in the full suite
    [
        s if s.name.startswith("mobilenet") else pytest.param(s, marks=pytest.mark.slow)
        for s in SPECS
    ],
    ids=lambda s: s.name,
)
def test_weights_file_is_what_keras_downloads(spec, monkeypatch):
    from keras.src.utils import file_utils

    def get_file(fname=None, origin=None, file_hash=None, **kwargs):
        raise _Requested(fname, origin, file_hash)

    monkeypatch.setattr(file_utils, "get_file", get_file)
    with pytest.raises(_Requested) as requested:
        spec.build((*spec.input_size, 3), "imagenet")
    fname, origin, file_hash = requested.value.args
    assert spec.weights_file in (fname, os.path.basename(origin))
    if file_hash and len(file_hash) == 64:  # Keras publishes a SHA-256: declare the same one
        assert spec.weights_sha256 == file_hash


# --- the full contract, one variant per family -----------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "spec",
    [*FAMILIES.values(), BY_NAME["mobilenet_v3_large-1.0-minimalistic-nopre"]],
    ids=lambda s: s.name,
)
def test_backbone_contract(spec):
    passed = check_backbone(spec)
    assert "second build names" in passed[-1]
    if spec.family == "NASNet":
        assert "no block boundaries" in passed[-2]
    else:
        assert "single-tensor cut" in passed[-2]


# --- Keras quirks the plugins handle -----------------------------------------


def test_mobilenet_v3_nopre_bakes_in_what_the_model_does_inside():
    with_pre, without = BY_NAME["mobilenet_v3_small-1.0"], BY_NAME["mobilenet_v3_small-1.0-nopre"]
    inside, outside = with_pre.build((32, 32, 3), None), without.build((32, 32, 3), None)
    outside.set_weights(inside.get_weights())
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(
        np.asarray(outside(without.preprocessing.apply(x))),
        np.asarray(inside(x)),
        rtol=1e-4,
        atol=1e-4,
    )


@pytest.mark.slow
def test_efficientnet_weights_from_a_path_give_keras_imagenet_model(tmp_path, monkeypatch):
    """Keras adds Rescaling(1/sqrt(std)) only for weights="imagenet"; a path must give the same function."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format
    from keras.src.utils import file_utils

    spec = BY_NAME["efficientnet_b0"]
    donor = keras.applications.EfficientNetB0(
        input_shape=(32, 32, 3), include_top=False, weights=None
    )
    norm = next(layer for layer in donor.layers if isinstance(layer, keras.layers.Normalization))
    norm.adapt_mean.assign(
        [0.485, 0.456, 0.406]
    )  # what the official file holds: the std as "variance"
    norm.adapt_variance.assign([0.229, 0.224, 0.225])
    path = tmp_path / spec.weights_file
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, donor)

    monkeypatch.setattr(file_utils, "get_file", lambda *args, **kwargs: str(path))
    reference = keras.applications.EfficientNetB0(
        input_shape=(32, 32, 3), include_top=False, weights="imagenet"
    )
    from_path = spec.build((32, 32, 3), str(path))
    plain = keras.applications.EfficientNetB0(
        input_shape=(32, 32, 3), include_top=False, weights=str(path)
    )

    def stem(
        model,
    ):  # the first convolution sees the preprocessed pixels; random-init outputs are ~1e-7
        return np.asarray(keras.Model(model.input, model.get_layer("stem_conv").output)(x))

    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    want = stem(reference)
    assert np.abs(want).max() > 0.1
    np.testing.assert_allclose(stem(from_path), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(from_path(x)), np.asarray(reference(x)), rtol=1e-3, atol=1e-9
    )
    assert not np.allclose(stem(plain), want, rtol=1e-2, atol=1e-3)  # the quirk is real


def test_xception_boundaries_keep_their_names_across_builds():
    import keras

    from autotl.training.model import block_boundaries

    spec = BY_NAME["xception"]
    first = spec.build((71, 71, 3), None)
    keras.applications.Xception(
        input_shape=(71, 71, 3), include_top=False, weights=None
    )  # moves Keras' name counters
    second = spec.build((71, 71, 3), None)
    assert (
        block_boundaries(first, spec.block_pattern)
        == block_boundaries(second, spec.block_pattern)
        == [f"block{i}_add" for i in range(2, 14)]
    )
    assert [layer.name for layer in first.layers] == [layer.name for layer in second.layers]


@pytest.mark.skipif(
    not (SHARED_WEIGHTS / "mobilenet_2_5_224_tf_no_top.h5").is_file(),
    reason="needs ../shared/weights",
)
def test_mobilenet_025_hash_is_the_keras_release_file():
    from autotl.backbones.weights import WeightsSource, resolve_weights

    spec = BY_NAME["mobilenet-0.25"]
    data = (SHARED_WEIGHTS / spec.weights_file).read_bytes()
    assert hashlib.sha256(data).hexdigest() == spec.weights_sha256
    resolved = resolve_weights(spec, WeightsSource("dir", SHARED_WEIGHTS))
    assert resolved.sha256 == spec.weights_sha256
    base = spec.build((*spec.input_size, 3), resolved.argument)
    assert base.output.shape[-1] == 256


# --- autotl.testing itself: it must fail, and say why ------------------------


def _toy_build(input_shape, weights):
    """Two residual blocks: ``blockN_add`` are cuts, ``blockN_conv`` are not (the skip crosses them)."""
    import keras

    x = keras.Input(input_shape)
    stem = keras.layers.Conv2D(4, 3, name="stem")(x)
    r1 = keras.layers.Conv2D(4, 3, padding="same", name="block1_conv")(stem)
    a1 = keras.layers.Add(name="block1_add")([stem, r1])
    r2 = keras.layers.Conv2D(4, 3, padding="same", name="block2_conv")(a1)
    a2 = keras.layers.Add(name="block2_add")([a1, r2])
    return keras.Model(x, keras.layers.Conv2D(8, 1, name="head_conv")(a2), name="toy")


TOY = BackboneSpec(
    name="toy-1.0",
    build=_toy_build,
    input_size=(32, 32),
    preprocessing=Preprocessing.tf(),
    block_pattern=r"_add$",
    family="Toy",
    description="a tiny residual net for the checker's own tests",
)


def test_toy_passes():
    passed = check_backbone(TOY)
    assert passed[-2].startswith("ok: 2 block boundaries (block1_add ... block2_add)")
    assert "64x64" in passed[-3]


def test_layers_named_by_keras_counter_fail():
    def build(
        input_shape, weights
    ):  # Xception as Keras builds it: shortcut convs conv2d, conv2d_1, ...
        import keras

        return keras.applications.Xception(input_shape=input_shape, include_top=False, weights=None)

    with pytest.raises(
        AssertionError,
        match=r"'toy-1.0': layer names: layers with weights are named differently in a second build \(conv2d",
    ):
        check_backbone(
            replace(TOY, build=build, input_size=(71, 71), block_pattern=r"^add(_\d+)?$"),
            size=(71, 71),
        )


def test_boundaries_named_by_keras_counter_fail():
    def build(input_shape, weights):  # the toy with unnamed adds: add, add_1, then add_2, add_3 ...
        import keras

        x = keras.Input(input_shape)
        stem = keras.layers.Conv2D(4, 3, name="stem")(x)
        a = keras.layers.Add()(
            [stem, keras.layers.Conv2D(4, 3, padding="same", name="block1_conv")(stem)]
        )
        return keras.Model(x, keras.layers.Conv2D(8, 1, name="head_conv")(a))

    with pytest.raises(
        AssertionError,
        match=r"layer names: the block boundaries are named differently in a second build",
    ):
        check_backbone(replace(TOY, build=build, block_pattern=r"^add"))


@pytest.mark.parametrize(
    "field, value",
    [
        ("name", "Toy Net!"),
        ("input_size", (16, 16)),
        ("input_sizes", ((64, 64),)),
        ("block_pattern", "block(_add"),
        ("weights_sha256", "ABC123"),
        ("build", "not callable"),
        ("preprocessing", Preprocessing("tf", channel_order="GBR")),
    ],
)
def test_a_bad_field_fails_naming_the_field(field, value):
    spec = replace(TOY, **{field: value})
    with pytest.raises(AssertionError, match=rf"backbone '.*': fields: .*{field.split('.')[0]}"):
        check_backbone(spec)


def test_preprocessing_that_differs_from_preprocess_input_fails():
    spec = replace(BY_NAME["resnet50"], preprocessing=Preprocessing.tf())  # ResNet50 is caffe
    with pytest.raises(
        AssertionError, match=r"'resnet50': preprocessing: .*differs from preprocess_input"
    ):
        check_preprocessing(spec)


def test_preprocessing_outside_its_mode_range_fails():
    spec = replace(
        TOY, preprocessing=Preprocessing("tf", (2 / 255,) * 3, (0.0,) * 3)
    )  # [0, 2] is not inside tf's [-1, 1]
    check_preprocessing(
        replace(spec, preprocessing=replace(spec.preprocessing, mode="custom"))
    )  # unknown mode: no range
    with pytest.raises(
        AssertionError, match=r"preprocessing: mode 'tf' must send 0..255 into \[-1, 1\]"
    ):
        check_preprocessing(spec)


def test_pattern_whose_matches_are_not_cuts_gives_no_boundaries():
    from autotl.training.model import block_boundaries

    spec = replace(TOY, block_pattern=r"_conv$")  # block convs sit inside their residual blocks
    base = spec.build((32, 32, 3), None)
    assert [layer.name for layer in base.layers if layer.name.endswith("_conv")] == [
        "block1_conv",
        "block2_conv",
        "head_conv",
    ]
    assert block_boundaries(base, spec.block_pattern) == []
    assert "no block boundaries" in check_backbone(spec)[-2]


@pytest.mark.slow
def test_pattern_whose_matches_are_not_cuts_gives_no_boundaries_on_resnet50():
    from autotl.training.model import block_boundaries

    base = BY_NAME["resnet50"].build((32, 32, 3), None)
    inside = [layer.name for layer in base.layers if layer.name.endswith("_1_conv")]
    assert len(inside) == 16
    assert block_boundaries(base, r"_1_conv$") == []


def test_pattern_matching_no_layer_fails():
    with pytest.raises(
        AssertionError, match=r"'toy-1.0': block_pattern: '\^nothing\$' matches no layer"
    ):
        check_backbone(replace(TOY, block_pattern=r"^nothing$"))


def test_a_boundary_that_is_not_a_cut_fails(monkeypatch):
    import autotl.training.model

    monkeypatch.setattr(
        autotl.training.model,
        "block_boundaries",
        lambda base, pattern: ["block1_conv", "block2_add"],
    )
    with pytest.raises(
        AssertionError, match=r"block boundaries: 'block1_conv' is not a single-tensor cut"
    ):
        check_backbone(TOY)


def test_a_boundary_with_nothing_trainable_above_fails():
    def build(input_shape, weights):
        import keras

        base = _toy_build(input_shape, weights)
        x = keras.layers.BatchNormalization(name="post_bn")(base.output)
        return keras.Model(base.input, keras.layers.ReLU(name="post_relu")(x))

    with pytest.raises(AssertionError, match=r"no layer with weights .* above 'head_conv'"):
        check_backbone(replace(TOY, build=build, block_pattern=r"_add$|^head_conv$"))


def test_a_base_with_a_top_fails():
    def build(input_shape, weights):
        import keras

        base = _toy_build(input_shape, weights)
        return keras.Model(base.input, keras.layers.GlobalAveragePooling2D()(base.output))

    with pytest.raises(
        AssertionError, match=r"'toy-1.0': build: the base must output one feature map"
    ):
        check_backbone(replace(TOY, build=build))


def test_a_build_that_fails_everywhere_names_each_size():
    def build(input_shape, weights):
        raise ValueError(f"no {input_shape[0]}")

    with pytest.raises(
        AssertionError,
        match=r"build: .*at 64x64: ValueError: no 64; at 96x96: .*; at 32x32: ValueError: no 32",
    ):
        check_backbone(replace(TOY, build=build))


def test_specs_of_and_backbone_params_register_like_autotl():
    import autotl_plugins.resnet as module

    by_module, by_name = specs_of(module), specs_of("autotl_plugins.resnet")
    assert [s.name for s in by_module] == [s.name for s in by_name] == ["resnet50", "resnet50_v2"]
    assert {s.plugin for s in by_name} == {"autotl_plugins.resnet"}
    assert [p.id for p in backbone_params(module)] == ["resnet50", "resnet50_v2"]


@pytest.mark.parametrize(
    "spec", backbone_params("autotl_tiny")
)  # the pattern of autotl.testing's docstring
def test_third_party_plugin_passes_the_contract(spec):
    check_backbone(spec)


# --- the contract's data: weight files, downloads, malformed hooks ---------------------------


@pytest.mark.parametrize(
    "weights_file, ok",
    [
        ("tiny.weights.h5", True),
        ("tiny.keras", True),
        ("tiny_notop.h5", True),
        ("tiny.hdf5", True),
        ("tiny.weights", False),  # Keras would not know how to read it
        ("tiny.npz", False),
        ("weights/tiny.weights.h5", False),  # a name in the weights folder, not a path
    ],
)
def test_weights_file_must_be_a_name_keras_can_read(weights_file: str, ok: bool) -> None:
    problems = replace(TOY, weights_file=weights_file).validate()
    assert (problems == []) == ok, problems


def test_downloadable_is_data_a_hand_written_backbone_sets() -> None:
    from autotl.backbones.weights import WeightsMissing, WeightsSource, resolve_weights

    assert all(spec.downloadable for spec in SPECS)  # keras.applications: Keras downloads them
    with pytest.raises(WeightsMissing, match=r"'toy-1.0' has no ImageNet weights to download"):
        resolve_weights(replace(TOY, downloadable=False), WeightsSource("imagenet"))
    assert replace(TOY, downloadable="yes").validate() == [
        "downloadable: must be True or False, got 'yes'"
    ]


@pytest.mark.parametrize(
    "module", ["faulty.returns_generator", "faulty.returns_spec", "faulty.hook_raises"]
)
def test_specs_of_says_what_registration_says_of_a_malformed_hook(module: str) -> None:
    from autotl.errors import PluginError

    with pytest.raises(PluginError, match=rf"plugin '{module}': autotl_backbones\(\)"):
        specs_of(module)


def test_weight_file_format_is_checked_by_its_first_bytes(tmp_path: Path) -> None:
    from autotl.backbones.weights import weight_file_problem

    (tmp_path / "a.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 16)
    (tmp_path / "b.weights.h5").write_bytes(b"PK\x03\x04 a zip")
    (tmp_path / "c.keras").write_bytes(b"PK\x03\x04 a zip")
    assert weight_file_problem(tmp_path / "a.weights.h5") is None
    assert "is not an HDF5 file" in weight_file_problem(tmp_path / "b.weights.h5")
    assert weight_file_problem(tmp_path / "c.keras") is None
