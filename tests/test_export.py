"""Exporting a run's model: every format written, loaded back and checked against the Keras model.

One tiny search and one full export (keras, SavedModel, TFLite float and int8) are
shared by the whole module; the fresh-process checks run in one subprocess where
autotl cannot be imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_SPACE, call_cli, run_without_autotl

from autotl.backbones.weights import WeightsSource
from autotl.engine.optuna_engine import SearchConfig, run_search
from autotl.engine.space import load_space
from autotl.errors import UsageError
from autotl.export import (
    FLOAT_TOLERANCE,
    INT8_MIN_AGREEMENT,
    ExportParityError,
    check_parity,
    export,
    load_predictor,
    verify_export,
    wilson_interval,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")

SPACE = TINY_SPACE


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory, registry, tiny_dataset) -> Path:
    """One real tiny search (two trials), recorded as the CLI records it (with the data summary)."""
    root = tmp_path_factory.mktemp("export_run")
    (root / "space.yaml").write_text(SPACE)
    space, _ = load_space(root / "space.yaml")
    out = root / "run"
    study = run_search(
        SearchConfig(out=out, space=space, trials=2, weights=WeightsSource("none")),
        registry,
        tiny_dataset,
    )
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    return out


@pytest.fixture(scope="session")
def exported(run_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    return export(
        run_dir,
        tmp_path_factory.mktemp("export") / "out",
        "keras,savedmodel,tflite,onnx",
        quantize="int8",
    )


@pytest.fixture(scope="session")
def val_images(tiny_dataset) -> list[np.ndarray]:
    return [tiny_dataset.val.load(i) for i in range(len(tiny_dataset.val))]


def keras_probs(model_path: Path, images: list[np.ndarray]) -> np.ndarray:
    """The Keras model on each image at its own size."""
    import keras

    model = keras.saving.load_model(model_path, safe_mode=True)
    return np.concatenate(
        [
            keras.ops.convert_to_numpy(model(im[None].astype("float32"), training=False))
            for im in images
        ]
    )


def other_trial(run_dir: Path, trial: int) -> int:
    import optuna

    study = optuna.load_study(study_name="autotl", storage=f"sqlite:///{run_dir / 'study.db'}")
    return next(t.number for t in study.trials if t.number != trial)


def other_trial_model(run_dir: Path, trial: int, registry) -> Path:
    """The .keras file of the trial that is not ``trial``, assembled from its stored layers."""
    import optuna

    from autotl.run.folder import RunFolder
    from autotl.run.trial_models import trial_model

    study = optuna.load_study(study_name="autotl", storage=f"sqlite:///{run_dir / 'study.db'}")
    return trial_model(
        RunFolder(run_dir),
        study,
        study.trials[other_trial(run_dir, trial)],
        registry,
        WeightsSource("none"),
    )


def assert_one_line(exc: pytest.ExceptionInfo, *fragments: str) -> None:
    text = str(exc.value)
    assert "\n" not in text, text
    for fragment in fragments:
        assert fragment in text, text


# --------------------------------------------------------------------------- the export itself


def test_export_writes_every_format_with_parity_in_tolerance(
    exported, run_dir: Path, tiny_dataset
) -> None:
    import optuna

    out = exported.out_dir
    for name in (
        "model.keras",
        "savedmodel/saved_model.pb",
        "savedmodel/assets/labels.txt",
        "model.tflite",
        "model_int8.tflite",
        "model.onnx",
        "model_int8.onnx",
        "labels.txt",
        "MODEL_CARD.md",
        "parity.json",
    ):
        assert (out / name).is_file(), name
    assert (
        not list(out.parent.glob(".out.partial-*")) and not (out.parent / "out.unverified").exists()
    )
    study = optuna.load_study(study_name="autotl", storage=f"sqlite:///{run_dir / 'study.db'}")
    assert (
        exported.trial
        == study.best_trial.number
        == json.loads((run_dir / "best_model.json").read_text())["trial"]
    )
    assert (out / "model.keras").read_bytes() == (run_dir / "best_model.keras").read_bytes()
    assert (
        (out / "labels.txt").read_text().splitlines()
        == list(tiny_dataset.class_names)
        == exported.class_names
    )
    assert exported.input_size == (32, 32)
    assert exported.warnings == []  # the same data, split as the search split it

    parity = json.loads((out / "parity.json").read_text())
    assert parity == json.loads(json.dumps(exported.parity)) and parity["passed"] is True
    assert parity["images"] == len(tiny_dataset.val) == parity["data"]["validation_images"]
    formats = parity["formats"]
    assert set(formats) == {
        "keras",
        "savedmodel:serving_default",
        "savedmodel:serving_bytes",
        "tflite",
        "tflite_int8",
        "onnx",
        "onnx_int8",
    }
    for fmt in (
        "keras",
        "savedmodel:serving_default",
        "savedmodel:serving_bytes",
        "tflite",
        "onnx",
    ):
        assert (
            formats[fmt]["max_abs_diff"] <= FLOAT_TOLERANCE
            and formats[fmt]["top1_agreement"] == 1.0
        ), (fmt, formats[fmt])
    int8 = formats["tflite_int8"]
    assert int8["top1_agreement"] >= INT8_MIN_AGREEMENT and int8["max_abs_diff"] is not None, int8
    assert int8["input_dtype"] == "uint8" and int8["output_dtype"] == "uint8"
    assert int8["input_quantization"] == [1.0, 0]  # uint8 input is the raw pixel value

    score = parity[
        "search_score"
    ]  # the Keras model is the one the search scored, on the whole validation split
    assert score["passed"] and score["images"] == len(tiny_dataset.val)
    assert score["accuracy"] == pytest.approx(
        score["recorded_accuracy"], abs=1.01 / score["images"]
    )

    from autotl.run.lineage import find_model

    for name in ("model.keras", "model_int8.tflite", "savedmodel/saved_model.pb", "model.onnx"):
        found = find_model(f"sqlite:///{run_dir / 'study.db'}", out / name)
        assert found is not None and found["trial_number"] == exported.trial, name
        assert any(r["kind"] == "export" for r in found["same_bytes"]), name

    card = (out / "MODEL_CARD.md").read_text()
    n_val = len(tiny_dataset.val)
    for fragment in (
        "## Data",
        "## Metrics",
        "Wilson interval",
        f"/{n_val})",
        "Backbone: `tiny`",
        "SHA-256",
        "### Hyperparameters",
        "head_width",
        "Phase 1 (frozen base, head only)",
        "reproduces the search's score",
        "head stable at epoch",
        "Gate to fine-tuning: passed",
        "## Intended use and limits",
        "tflite_int8",
        "| blue |",
    ):
        assert fragment in card, fragment


def test_wilson_interval() -> None:
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(9, 9) == pytest.approx((0.7009, 1.0), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


# --------------------------------------------------------------------------- a fresh process, without autotl


CHILD = r"""
try:
    import autotl
    raise SystemExit("import autotl worked")
except ModuleNotFoundError:
    pass
import numpy as np, keras, tensorflow as tf
out, inputs = sys.argv[1], sys.argv[2]
spec = json.load(open(inputs + "/spec.json"))
model = keras.saving.load_model(out + "/model.keras", safe_mode=True)
res = {"keras": [model(np.load(inputs + "/" + f).astype("float32"), training=False).numpy().tolist() for f in spec["arrays"]]}
sm = tf.saved_model.load(out + "/savedmodel")
res["signatures"] = sorted(sm.signatures)
d, b = sm.signatures["serving_default"], sm.signatures["serving_bytes"]
res["default_inputs"] = {k: [v.dtype.name, v.shape.as_list()] for k, v in d.structured_input_signature[1].items()}
res["bytes_inputs"] = {k: [v.dtype.name, v.shape.as_list()] for k, v in b.structured_input_signature[1].items()}
res["default"] = []
for f in spec["arrays"]:
    r = d(images=tf.constant(np.load(inputs + "/" + f)))
    res["default"].append({"probabilities": r["probabilities"].numpy().tolist(), "classes": [c.decode() for c in r["classes"].numpy()],
                           "dtype": r["probabilities"].dtype.name})
r = b(image_bytes=tf.constant([open(inputs + "/" + f, "rb").read() for f in spec["files"]]))
res["bytes"] = {"probabilities": r["probabilities"].numpy().tolist(), "classes": [c.decode() for c in r["classes"].numpy()]}
print(json.dumps(res))
"""


@pytest.fixture(scope="session")
def fresh(exported, val_images, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run CHILD with ``python -I -S`` from an empty folder; return its results and the inputs it got."""
    from PIL import Image

    inputs = tmp_path_factory.mktemp("fresh_inputs")
    by_shape: dict[tuple, list[np.ndarray]] = {}
    for im in val_images:
        by_shape.setdefault(im.shape, []).append(im)
    shapes = sorted(by_shape, key=lambda s: -len(by_shape[s]))
    a = by_shape[shapes[0]][:1]  # a batch of one
    b = (by_shape[shapes[1]] + [by_shape[shapes[1]][0][::-1]])[:2]  # a batch of two at another size
    assert a[0].shape != b[0].shape
    arrays = {"a.npy": np.stack(a), "b.npy": np.stack(b)}
    for name, batch in arrays.items():
        np.save(inputs / name, batch)
    Image.fromarray(val_images[0]).save(inputs / "plain.png")
    Image.fromarray(val_images[1]).save(inputs / "photo.jpg", quality=90)
    rgba = np.dstack(
        [
            val_images[2],
            np.linspace(0, 255, val_images[2].shape[1])
            .astype("uint8")[None]
            .repeat(val_images[2].shape[0], 0),
        ]
    )
    Image.fromarray(rgba, "RGBA").save(inputs / "alpha.png")
    files = ["plain.png", "photo.jpg", "alpha.png"]
    (inputs / "spec.json").write_text(json.dumps({"arrays": list(arrays), "files": files}))
    result = run_without_autotl(
        CHILD, str(exported.out_dir), str(inputs), cwd=tmp_path_factory.mktemp("fresh_cwd")
    )
    return {
        "result": result,
        "arrays": arrays,
        "files": [inputs / f for f in files],
    }


def test_keras_file_loads_where_autotl_is_not_importable(fresh, exported) -> None:
    res = fresh["result"]
    for got, batch in zip(res["keras"], fresh["arrays"].values()):
        want = keras_probs(exported.out_dir / "model.keras", list(batch))
        np.testing.assert_allclose(np.asarray(got), want, atol=FLOAT_TOLERANCE)


def test_savedmodel_signatures_in_a_fresh_process(fresh, exported) -> None:
    from autotl.data.dataset import decode_image

    res = fresh["result"]
    names = exported.class_names
    assert res["signatures"] == ["serving_bytes", "serving_default"]
    assert res["default_inputs"] == {"images": ["uint8", [None, None, None, 3]]}
    assert res["bytes_inputs"] == {"image_bytes": ["string", [None]]}
    for got, batch in zip(res["default"], fresh["arrays"].values()):  # two sizes, in separate calls
        want = keras_probs(exported.out_dir / "model.keras", list(batch))
        probs = np.asarray(got["probabilities"])
        assert got["dtype"] == "float32" and probs.shape == (len(batch), len(names))
        np.testing.assert_allclose(probs, want, atol=FLOAT_TOLERANCE)
        assert got["classes"] == [names[i] for i in want.argmax(1)]
    # encoded files: PNG, JPEG and a PNG with transparency, decoded as autotl decodes them for training
    want = keras_probs(exported.out_dir / "model.keras", [decode_image(f) for f in fresh["files"]])
    np.testing.assert_allclose(
        np.asarray(res["bytes"]["probabilities"]), want, atol=FLOAT_TOLERANCE
    )
    assert res["bytes"]["classes"] == [names[i] for i in want.argmax(1)]


# --------------------------------------------------------------------------- TFLite and the predictors


def test_tflite_float_and_int8_through_the_interpreter(exported, val_images) -> None:
    import keras
    import tensorflow as tf

    want = keras_probs(exported.out_dir / "model.keras", val_images)
    resized = [
        keras.ops.convert_to_numpy(
            keras.ops.image.resize(im[None].astype("float32"), (32, 32), interpolation="bilinear")
        )
        for im in val_images
    ]
    for name in ("model.tflite", "model_int8.tflite"):
        it = tf.lite.Interpreter(model_path=str(exported.out_dir / name))
        it.allocate_tensors()
        inp, outp = it.get_input_details()[0], it.get_output_details()[0]
        assert list(inp["shape"]) == [1, 32, 32, 3]
        ops = {d["op_name"] for d in it._get_ops_details()}
        assert "VAR_HANDLE" not in ops and "READ_VARIABLE" not in ops, (
            ops
        )  # weights frozen, not uninitialised variables (NaN)
        got = []
        for x in resized:
            if inp["dtype"] == np.uint8:  # scale 1, zero point 0: the pixels themselves
                x = np.clip(np.round(x), 0, 255)
            it.set_tensor(inp["index"], x.astype(inp["dtype"]))
            it.invoke()
            y = it.get_tensor(outp["index"])[0]
            scale, zero = outp["quantization"]
            got.append((y.astype("float32") - zero) * scale if outp["dtype"] == np.uint8 else y)
        got = np.stack(got)
        if name == "model.tflite":
            assert inp["dtype"] == np.float32
            np.testing.assert_allclose(got, want, atol=FLOAT_TOLERANCE)
        else:
            assert inp["dtype"] == np.uint8 and outp["dtype"] == np.uint8
            assert (got.argmax(1) == want.argmax(1)).mean() >= INT8_MIN_AGREEMENT
            assert np.abs(got - want).max() < 0.05


def test_load_predictor_reads_every_format(exported, run_dir: Path, val_images) -> None:
    out = exported.out_dir
    want = keras_probs(out / "model.keras", val_images)
    for path, exact in (
        (out / "model.keras", True),
        (out / "savedmodel", True),
        (out / "model.tflite", True),
        (out / "model_int8.tflite", False),
        (out / "model.onnx", True),
        (out / "model_int8.onnx", False),
        (out, True),
        (run_dir, True),
    ):
        predict, names = load_predictor(path)
        assert names == exported.class_names, path
        got = predict(val_images)
        assert got.shape == want.shape, path
        if exact and path != run_dir:
            np.testing.assert_allclose(got, want, atol=FLOAT_TOLERANCE, err_msg=str(path))
        assert (got.argmax(1) == want.argmax(1)).mean() >= INT8_MIN_AGREEMENT, path
    with pytest.raises(UsageError) as exc:
        load_predictor(out / "labels.txt")
    assert_one_line(exc, "not a model autotl can load")


# --------------------------------------------------------------------------- ONNX and ONNX Runtime

ONNX_CHILD = r"""
import json, sys
import numpy as np
import onnxruntime as ort
out, inputs = sys.argv[1], sys.argv[2]
res = {}
for name in ("model.onnx", "model_int8.onnx"):
    s = ort.InferenceSession(out + "/" + name, providers=["CPUExecutionProvider"])
    i, o = s.get_inputs()[0], s.get_outputs()[0]
    res[name] = {
        "input": [i.name, i.type, i.shape], "output": [o.name, o.type],
        "labels": json.loads(s.get_modelmeta().custom_metadata_map["labels"]),
        "probs": [s.run(None, {i.name: np.load(inputs + "/" + b)})[0].tolist() for b in ("a.npy", "b.npy")],
    }
print(json.dumps(res))
"""


def test_onnx_runs_in_onnx_runtime_where_autotl_is_not_importable(
    fresh, exported, tmp_path: Path
) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name, batch in fresh["arrays"].items():  # two batches of different image sizes
        np.save(inputs / name, batch)
    res = run_without_autotl(ONNX_CHILD, str(exported.out_dir), str(inputs), cwd=tmp_path)
    for name in ("model.onnx", "model_int8.onnx"):
        got = res[name]
        assert got["input"] == ["images", "tensor(uint8)", ["batch", "height", "width", 3]]
        assert got["output"] == ["probabilities", "tensor(float)"]
        assert got["labels"] == exported.class_names  # inside the file: nothing else to ship
        for probs, batch in zip(got["probs"], fresh["arrays"].values()):
            want = keras_probs(exported.out_dir / "model.keras", list(batch))
            if name == "model.onnx":
                np.testing.assert_allclose(np.asarray(probs), want, atol=FLOAT_TOLERANCE)
            else:
                assert (np.asarray(probs).argmax(1) == want.argmax(1)).all()


def test_onnx_int8_is_quantized_and_reported_like_tflite_int8(exported, run_dir: Path) -> None:
    import onnx

    formats = exported.parity["formats"]
    fp32, int8 = formats["onnx"], formats["onnx_int8"]
    assert fp32["quantized"] is False and fp32["quantized_nodes"] == 0
    assert int8["quantized"] is True and int8["quantized_nodes"] > 0
    assert int8["tolerance"] == {"min_top1_agreement": INT8_MIN_AGREEMENT}
    for record in (fp32, int8, formats["tflite_int8"]):  # agreement and accuracy, side by side
        assert record["top1_agreement"] >= INT8_MIN_AGREEMENT and 0 <= record["accuracy"] <= 1
    graph = onnx.load(str(exported.out_dir / "model_int8.onnx")).graph
    weights = {t.name: t.data_type for t in graph.initializer}
    assert onnx.TensorProto.INT8 in weights.values()  # int8 weights, not float ones
    card = (exported.out_dir / "MODEL_CARD.md").read_text()
    assert (
        "| onnx_int8 | `model_int8.onnx` |" in card and "ONNX Runtime static quantization" in card
    )

    from autotl.run.lineage import find_model

    found = find_model(f"sqlite:///{run_dir / 'study.db'}", exported.out_dir / "model_int8.onnx")
    assert found is not None and found["trial_number"] == exported.trial


def test_autotl_predict_reads_an_onnx_file(exported, val_images, tmp_path: Path, capsys) -> None:
    from PIL import Image

    path = tmp_path / "one.png"
    Image.fromarray(val_images[0]).save(path)
    for model in ("model.onnx", "model_int8.onnx"):
        assert call_cli("predict", str(exported.out_dir / model), str(path)) == 0
        line = capsys.readouterr().out.strip().splitlines()[-1]
        want = keras_probs(exported.out_dir / "model.keras", val_images[:1])[0]
        assert exported.class_names[int(want.argmax())] in line, line


BLOCK_ONNX = r"""
import sys
class Block:  # this Python has no tf2onnx, onnx or onnxruntime, as after `pip install autotl`
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"tf2onnx", "onnx", "onnxruntime"}:
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Block())
from autotl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_without_the_onnx_extra_asking_for_onnx_is_one_line(
    exported, run_dir: Path, tmp_path: Path, val_images
) -> None:
    from PIL import Image

    image = tmp_path / "one.png"
    Image.fromarray(val_images[0]).save(image)
    space = tmp_path / "space.yaml"
    space.write_text(TINY_SPACE + "deploy: {format: onnx}\n")
    out = tmp_path / "out"
    cases = [
        ["export", str(run_dir), "--format", "keras,onnx", "--out", str(out)],
        ["predict", str(exported.out_dir / "model.onnx"), str(image)],
        ["search", str(tmp_path), "--space", str(space), "--objectives", "accuracy,latency_ms",
         "--out", str(tmp_path / "run"), "--weights", "none", "--plugin", "autotl_tiny"],
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent / "plugins")}
    for argv in cases:
        proc = subprocess.run(
            [sys.executable, "-c", BLOCK_ONNX, *argv], capture_output=True, text=True, env=env
        )
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.startswith("autotl: error:")]
        assert len(lines) == 1 and "pip install 'autotl[onnx]'" in lines[0], proc.stderr
    assert (
        not out.exists() and not (tmp_path / "run").exists()
    )  # refused before anything was written


# --------------------------------------------------------------------------- parity failures are loud


def test_check_parity_rejects_perturbed_predictions() -> None:
    rng = np.random.default_rng(0)
    ref = rng.dirichlet(np.ones(3), size=50).astype("float32")
    assert check_parity("x", ref, ref + 5e-5)["passed"]
    with pytest.raises(ExportParityError) as exc:
        check_parity("tflite", ref, ref + 1e-3)
    assert_one_line(exc, "tflite parity failed", "1.00e-03", "50/50")
    flipped = ref.copy()
    flipped[0] = (
        flipped[0][::-1] if flipped[0].argmax() != 1 else np.roll(flipped[0], 1)
    )  # top-1 changes on 1 of 50
    assert check_parity("tflite_int8", ref, flipped, quantized=True)["top1_agreement"] == 0.98
    flipped[1] = flipped[1][::-1] if flipped[1].argmax() != 1 else np.roll(flipped[1], 1)
    with pytest.raises(ExportParityError) as exc:
        check_parity("tflite_int8", ref, flipped, quantized=True)
    assert_one_line(exc, "tflite_int8 parity failed", "48/50")
    with pytest.raises(ExportParityError, match="NaN"):
        check_parity("savedmodel", ref, np.full_like(ref, np.nan))


def test_export_compared_with_another_trials_model_fails(
    exported, run_dir: Path, val_images, registry
) -> None:
    import keras

    other = keras.saving.load_model(
        other_trial_model(run_dir, exported.trial, registry), safe_mode=True
    )
    with pytest.raises(ExportParityError) as exc:
        verify_export(exported.out_dir, other, val_images)
    assert_one_line(exc, "keras parity failed", "max |dp|")
    assert exc.value.parity["formats"]["keras"]["passed"] is False


def test_a_broken_conversion_fails_the_export_and_leaves_out_empty(
    run_dir: Path, tmp_path: Path, monkeypatch, exported, registry
) -> None:
    import keras

    from autotl.export import _tflite

    other = keras.saving.load_model(
        other_trial_model(run_dir, exported.trial, registry), safe_mode=True
    )
    real = _tflite.convert
    monkeypatch.setattr(
        _tflite,
        "convert",
        lambda model, size, representative=None: real(other, size, representative),
    )
    out = tmp_path / "out"
    with pytest.raises(ExportParityError) as exc:
        export(run_dir, out, formats="tflite")
    assert_one_line(exc, "tflite parity failed", "unverified")
    assert not out.exists()
    parity = json.loads((tmp_path / "out.unverified" / "parity.json").read_text())
    assert parity["passed"] is False and parity["formats"]["tflite"]["passed"] is False
    assert not list(tmp_path.glob(".out.partial-*"))


def test_another_trial_is_assembled_from_its_stored_layers_and_reproduces_its_score(
    exported, run_dir: Path, tmp_path: Path, registry
) -> None:
    other = other_trial(run_dir, exported.trial)
    result = export(run_dir, tmp_path / "other", formats="keras", trial=other, registry=registry)
    assert result.trial == other and result.parity["model"] == f"trials/{other:04d}/model.keras"
    assert result.parity["search_score"]["passed"] is True


def test_a_model_that_is_not_the_trials_fails_before_anything_is_written(
    exported, run_dir: Path, tmp_path: Path, registry
) -> None:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("cache", "export"))
    wrong = other_trial_model(run_dir, exported.trial, registry)
    for target in (
        copy / "best_model.keras",
        copy / "trials" / f"{exported.trial:04d}" / "model.keras",
    ):  # the markers still name the best
        shutil.copyfile(wrong, target)
    with pytest.raises(ExportParityError) as exc:
        export(copy, tmp_path / "out", formats="keras")
    assert_one_line(exc, f"trial {exported.trial}'s model", "is not the model the search scored")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.unverified").exists()


# --------------------------------------------------------------------------- the command line and bad input


def cmd_export(*argv: str) -> int:
    return call_cli("export", *argv)


def test_cmd_export_keras_only_to_the_default_folder(run_dir: Path, capsys) -> None:
    assert cmd_export(str(run_dir), "--format", "keras") == 0
    printed = capsys.readouterr().out
    assert "exported trial" in printed and "keras\ttop-1 agreement 100.0%" in printed
    out = run_dir / "export"
    assert (
        (out / "model.keras").is_file()
        and (out / "MODEL_CARD.md").is_file()
        and not (out / "savedmodel").exists()
    )


def test_bad_inputs_are_one_line_usage_errors(run_dir: Path, tmp_path: Path, exported) -> None:
    import shutil

    cases = [
        ((str(tmp_path / "nope"),), ("run folder", "does not exist")),
        (
            (str(run_dir), "--format", "keras,coreml"),
            ("unknown export format 'coreml'", "keras, savedmodel, tflite, onnx"),
        ),
        ((str(run_dir), "--quantize", "fp16"), ("unknown quantization 'fp16'",)),
        (
            (str(run_dir), "--format", "keras", "--quantize", "int8"),
            ("add tflite or onnx to --format",),
        ),
        ((str(run_dir), "--trial", "7"), ("no trial 7", "0..1")),
        ((str(run_dir), "--trial", "-1"), ("--trial must be a trial number",)),
        ((str(tmp_path),), ("has no study.db",)),
    ]
    for argv, fragments in cases:
        with pytest.raises(UsageError) as exc:
            cmd_export(*argv, "--out", str(tmp_path / "x"))
        assert_one_line(exc, *fragments)
    # a trial whose model file was not kept (only the best K trials keep theirs, here and in the store)
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("cache", "export", "artifacts"))
    other = 1 - exported.trial
    shutil.rmtree(copy / "trials" / f"{other:04d}")
    with pytest.raises(UsageError) as exc:  # refused, not refitted (tests/test_refit.py refits)
        export(copy, tmp_path / "x", trial=other, refit=False)
    assert_one_line(
        exc, f"trial {other} has no saved model", f"trials with a model: {exported.trial}"
    )
    assert not (tmp_path / "x").exists()


def test_a_corrupt_file_is_a_parity_failure_not_a_traceback(
    exported, tmp_path: Path, val_images
) -> None:
    import shutil

    import keras

    broken = tmp_path / "broken"
    shutil.copytree(exported.out_dir, broken)
    (broken / "model.tflite").write_bytes(b"not a flatbuffer")
    (broken / "model.keras").unlink()
    shutil.rmtree(broken / "savedmodel")
    reference = keras.saving.load_model(exported.out_dir / "model.keras", safe_mode=True)
    with pytest.raises(ExportParityError) as exc:
        verify_export(broken, reference, val_images[:3])
    assert_one_line(exc, "tflite parity failed: running it raised")


# --------------------------------------------------------------------------- the format table


def _json_weights_format(perturb: float = 0.0):
    """A real extra format, defined here as a third party would: Keras' JSON architecture plus a
    ``.weights.h5`` file (``perturb`` adds noise to the saved weights, so its parity must fail)."""
    from autotl.export import Format, Loaded

    def write(model, ctx) -> None:
        import keras

        (ctx.folder / "model.json").write_text(model.to_json())
        copy = keras.models.model_from_json(model.to_json())
        rng = np.random.default_rng(0)
        copy.set_weights([w + perturb * rng.standard_normal(w.shape) for w in model.get_weights()])
        copy.save_weights(ctx.folder / "model.weights.h5")

    def load(path: Path):
        import keras

        model = keras.models.model_from_json((path.parent / "model.json").read_text())
        model.load_weights(path)

        def predict(images):
            return np.concatenate(
                [keras.ops.convert_to_numpy(model(im[None].astype("float32"))) for im in images]
            )

        return Loaded(predict=predict)

    return Format(
        name="keras_json",
        files=("model.weights.h5", "model.json"),
        write=write,
        load=load,
        recognises=lambda p: p.is_file() and p.name.endswith(".weights.h5"),
        title="a .weights.h5 file",
        description="Keras weights with a JSON architecture",
        usage=lambda size, facts: (
            "`model.weights.h5` with `model.json`: `model_from_json`, then `load_weights`."
        ),
        default=False,
    )


@pytest.fixture
def json_weights_format():
    from autotl.export import register_format, unregister_format

    fmt = register_format(_json_weights_format())
    yield fmt
    unregister_format(fmt.name)


def test_a_new_format_is_one_row_of_the_table(
    json_weights_format, exported, run_dir: Path, tmp_path: Path, val_images
) -> None:
    from autotl.export import FORMATS, owned_files
    from autotl.run.lineage import find_model

    assert "keras_json" in FORMATS and "model.json" in owned_files()
    out = tmp_path / "out"
    result = export(run_dir, out, formats="keras_json")
    assert result.files["keras_json"] == out / "model.weights.h5" and (out / "model.json").is_file()
    assert not (out / "model.keras").exists()
    parity = result.parity["formats"]["keras_json"]
    assert parity["passed"] and parity["max_abs_diff"] <= FLOAT_TOLERANCE, parity
    assert parity["file"] == "model.weights.h5"
    card = (out / "MODEL_CARD.md").read_text()
    assert "| keras_json | `model.weights.h5`, `model.json` | Keras weights with a JSON" in card
    assert "`model_from_json`, then `load_weights`" in card and "- `model.json`: `" in card
    predict, names = load_predictor(out / "model.weights.h5")  # `autotl predict` reads it too
    want = keras_probs(exported.out_dir / "model.keras", val_images)
    np.testing.assert_allclose(predict(val_images), want, atol=FLOAT_TOLERANCE)
    assert names == exported.class_names
    found = find_model(f"sqlite:///{run_dir / 'study.db'}", out / "model.json")
    assert found is not None and found["trial_number"] == exported.trial


def test_a_new_formats_parity_is_checked_and_its_files_are_owned(
    json_weights_format, exported, run_dir: Path, tmp_path: Path
) -> None:
    import shutil

    from autotl.export import register_format

    out = (
        tmp_path / "out"
    )  # an earlier export, holding the new format's files and one of the user's
    shutil.copytree(exported.out_dir, out)
    for name in ("model.json", "model.weights.h5", "NOTES.md"):
        (out / name).write_text(name)
    before = _tree(out)
    # the row writing other weights than the model's fails, naming it, and OUT keeps the earlier export
    register_format(_json_weights_format(perturb=0.5), replace=True)
    with pytest.raises(ExportParityError) as exc:
        export(run_dir, out, formats="keras,keras_json")
    assert_one_line(exc, "keras_json parity failed", "unverified")
    assert _tree(out) == before
    failed = json.loads((tmp_path / "out.unverified" / "parity.json").read_text())
    assert failed["formats"]["keras_json"]["passed"] is False
    assert failed["formats"]["keras"]["passed"] is True  # checked first, in table order
    # its files are autotl's: an export without it drops them, and keeps the user's file
    export(run_dir, out, formats="keras")
    assert not (out / "model.json").exists() and not (out / "model.weights.h5").exists()
    assert (out / "NOTES.md").read_text() == "NOTES.md" and not (out / "savedmodel").exists()


def test_the_table_refuses_a_clashing_row(json_weights_format) -> None:
    from dataclasses import replace

    from autotl.export import FORMATS, register_format

    with pytest.raises(ValueError, match="already registered"):
        register_format(json_weights_format)
    with pytest.raises(ValueError, match="which keras writes"):
        register_format(replace(json_weights_format, name="other", files=("model.keras",)))
    with pytest.raises(ValueError, match="which every export writes"):
        register_format(replace(json_weights_format, name="other", files=("labels.txt",)))
    assert "other" not in FORMATS
    with pytest.raises(UsageError) as exc:
        export("unused", "unused", formats="keras", quantize="int8")
    assert_one_line(exc, "add tflite or onnx to --format")


# --------------------------------------------------------------------------- bad --out and RUN_DIR: one line, nothing lost


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every folder under ``root``: what "nothing changed" compares."""
    return {
        str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(root.rglob("*"))
    }


def bad_export_cases(
    root: Path, run_dir: Path, exported
) -> list[tuple[list[str], tuple[str, ...]]]:
    """``(autotl export arguments, fragments of the one error line)`` for each bad RUN_DIR or --out, built in ``root``."""
    import shutil
    import sqlite3

    (root / "a_file").write_text("not a folder")
    (root / "photos").mkdir()
    (root / "photos" / "cat.jpg").write_bytes(b"\xff\xd8\xff not really")
    (root / "garbage").mkdir()
    (root / "garbage" / "study.db").write_bytes(np.random.default_rng(0).bytes(4096))
    (root / "other").mkdir()
    con = sqlite3.connect(root / "other" / "study.db")
    con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    con.execute("INSERT INTO notes (body) VALUES ('keep me')")
    con.commit()
    con.close()
    shutil.copytree(exported.out_dir, root / "earlier_export")
    out = ["--format", "keras", "--out"]
    fresh = str(root / "new_out")
    return [
        ([str(run_dir), *out, str(root / "a_file")], ("is a file",)),
        ([str(run_dir), *out, str(root / "photos")], ("not an earlier autotl export", "cat.jpg")),
        ([str(root / "photos"), *out, fresh], ("has no study.db",)),
        ([str(root / "garbage"), *out, fresh], ("is damaged or not a SQLite database",)),
        (
            [str(root / "other"), *out, fresh],
            ("another program's database", "notes", "does not write into it"),
        ),
    ]


def test_bad_out_or_run_folder_is_one_line_and_changes_nothing(
    run_dir: Path, tmp_path: Path, exported
) -> None:
    cases = bad_export_cases(tmp_path, run_dir, exported)
    before = _tree(tmp_path)
    for argv, fragments in cases:
        with pytest.raises(UsageError) as exc:
            cmd_export(*argv)
        assert_one_line(exc, *fragments)
    assert (
        _tree(tmp_path) == before
    )  # nothing written, created or removed; the other tool's database as it was


def _cli(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.Popen:
    """``autotl ARGS`` in a fresh process, as ``helpers.run_cli`` runs it, but started (to kill) and with a prefix."""
    from helpers import TESTS

    path = os.pathsep.join([str(TESTS / "plugins"), os.environ.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [*prefix, sys.executable, "-m", "autotl", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
    )


@pytest.mark.slow
def test_bad_export_inputs_through_the_real_cli(run_dir: Path, tmp_path: Path, exported) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from helpers import as_a_user, assert_one_line_error, run_cli

    cases = bad_export_cases(tmp_path, run_dir, exported)
    read_only = tmp_path / "earlier_export"  # an earlier export the user made read-only
    for path in (read_only, *read_only.rglob("*")):
        path.chmod(0o555 if path.is_dir() else 0o444)
    before = _tree(tmp_path)
    with ThreadPoolExecutor(3) as pool:
        done = list(pool.map(lambda case: run_cli("export", *case[0]), cases))
        proc = _cli(
            "export",
            str(run_dir),
            "--format",
            "keras",
            "--out",
            str(read_only),
            prefix=as_a_user(),
        )
        _, err = proc.communicate(timeout=600)
    for (_, fragments), result in zip(cases, done):
        assert_one_line_error(result, *fragments)
    assert_one_line_error(
        subprocess.CompletedProcess(proc.args, proc.returncode, "", err), "not writable"
    )
    assert _tree(tmp_path) == before


def test_stale_staging_is_removed_only_when_its_process_is_dead(tmp_path: Path) -> None:
    from autotl.export._staging import remove_stale

    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    dead = int(ended.stdout)
    out = tmp_path / "deploy"
    stale = tmp_path / f".deploy.partial-{dead}"
    running = tmp_path / f".deploy.partial-{os.getppid()}"  # another export, still running
    moved_aside = tmp_path / f".deploy.previous-{dead}"  # an install killed between its two renames
    not_ours = tmp_path / f".deploy2.partial-{dead}"
    for folder in (stale, running, moved_aside, not_ours):
        folder.mkdir()
    (moved_aside / "parity.json").write_text("{}")
    assert remove_stale(out) == [stale]
    assert running.is_dir() and not_ours.is_dir() and not moved_aside.exists()
    assert (out / "parity.json").read_text() == "{}"  # the previous export is put back


def _wait_for_staging(out: Path, proc: subprocess.Popen) -> Path:
    """The export's staging folder, once it holds a file (the export is writing), or fail if the export ended."""
    import time

    staging = out.parent / f".{out.name}.partial-{proc.pid}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if staging.is_dir() and any(staging.iterdir()):
            return staging
        time.sleep(0.01)
    raise AssertionError(f"export ended (code {proc.poll()}) before writing: {proc.stderr.read()}")


@pytest.mark.slow
def test_an_export_killed_while_writing_leaves_no_half_written_out(
    run_dir: Path, tmp_path: Path, exported
) -> None:
    import shutil
    import signal

    out = tmp_path / "deploy"
    stale = []
    for previous in (None, exported.out_dir):  # OUT absent, then OUT an earlier complete export
        if previous is not None:
            shutil.copytree(previous, out)
        before = _tree(out) if out.exists() else None
        proc = _cli(
            "export", str(run_dir), "--format", "keras,savedmodel,tflite", "--out", str(out)
        )
        staging = _wait_for_staging(out, proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        assert (
            _tree(out) if out.exists() else None
        ) == before  # absent, or the earlier export as it was
        assert staging.is_dir()  # what the killed export left: only its staging folder
        stale.append(staging)
    result = export(run_dir, out, formats="keras")  # the next export cleans up after the dead ones
    assert not any(s.exists() for s in stale) and not list(tmp_path.glob(".deploy.*"))
    assert result.parity["passed"] and not (out / "savedmodel").exists()
