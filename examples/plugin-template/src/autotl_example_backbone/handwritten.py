"""A hand-written backbone: a small residual network defined here, not taken from ``keras.applications``.

Everything a hand-written backbone needs to tell autotl, it says with data:

* ``downloadable=False``: there are no ImageNet weights to download, so
  ``weights="imagenet"`` means nothing to ``build``; autotl refuses it with
  one line instead of training on random weights that it would record as
  ImageNet's.  Its weights come from a file only: ``weights_file`` in
  ``--weights-dir DIR`` (or ``AUTOTL_WEIGHTS_DIR``).
* ``weights_file`` ends in ``.weights.h5``: the file Keras 3's
  ``model.save_weights`` writes.  It stores weights by layer *class and
  order*, not by name, so ``build`` must create the same layers in the same
  order as the model that saved them (:func:`save_pretrained` does).
* every layer is named, and the names ``blockN_out`` are the block
  boundaries: autotl stores the layers a trial trained by name and caches
  the features at a boundary by name.
"""

from __future__ import annotations

from pathlib import Path

from autotl import BackboneSpec, Preprocessing

#: The file autotl looks for in the weights folder; make it with :func:`save_pretrained`.
WEIGHTS_FILE = "example_mini_resnet.weights.h5"
WIDTHS = (16, 32, 64)


def build_mini_resnet(input_shape: tuple[int, int, int], weights: str | None):
    """Three residual blocks; ``weights`` is ``None`` (random) or the path of its weight file."""
    import keras
    from keras import layers

    image = keras.Input(input_shape, name="image")
    x = layers.Conv2D(WIDTHS[0], 3, strides=2, padding="same", name="stem_conv")(image)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for i, width in enumerate(WIDTHS, start=1):
        y = layers.Conv2D(width, 3, strides=2, padding="same", name=f"block{i}_conv1")(x)
        y = layers.BatchNormalization(name=f"block{i}_bn1")(y)
        y = layers.ReLU(name=f"block{i}_relu1")(y)
        y = layers.Conv2D(width, 3, padding="same", name=f"block{i}_conv2")(y)
        y = layers.BatchNormalization(name=f"block{i}_bn2")(y)
        shortcut = layers.Conv2D(width, 1, strides=2, name=f"block{i}_shortcut")(x)
        x = layers.Add(name=f"block{i}_add")([shortcut, y])
        x = layers.ReLU(name=f"block{i}_out")(x)
    model = keras.Model(image, x, name="mini_resnet")
    if weights is not None:  # a file path: "imagenet" never comes, since downloadable=False
        model.load_weights(weights)
    return model


def preprocess_input(x):
    """What the network was trained on: pixels scaled to [-1, 1] (``Preprocessing.tf()`` says the same)."""
    return x / 127.5 - 1.0


def save_pretrained(model, folder: str | Path) -> Path:
    """Write ``model``'s weights where autotl looks for them: ``folder/WEIGHTS_FILE``.

    Train the network first (or copy weights into it), then::

        save_pretrained(model, "weights/")
        # sha256sum weights/example_mini_resnet.weights.h5  -> weights_sha256 below
        # autotl search DATA --weights-dir weights/ --backbone example_mini_resnet
    """
    path = Path(folder) / WEIGHTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(path)
    return path


def mini_resnet_spec() -> BackboneSpec:
    return BackboneSpec(
        name="example_mini_resnet",
        family="MiniResNet",
        build=build_mini_resnet,
        input_size=(96, 96),
        input_sizes=((64, 64), (96, 96), (128, 128)),
        preprocessing=Preprocessing.tf(),
        preprocess_input=preprocess_input,
        block_pattern=r"^block\d_out$",  # block3_out is the last layer: 2 blocks to unfreeze from
        weights_file=WEIGHTS_FILE,
        weights_sha256=None,  # pin it once the file is made: sha256sum example_mini_resnet.weights.h5
        downloadable=False,
        description="a hand-written residual network: weights from its own .weights.h5 file only",
    )
