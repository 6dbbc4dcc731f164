"""VGG16 (Simonyan & Zisserman 2014) as an autotl backbone: a plugin package's whole code.

autotl imports this module through the ``autotl`` entry point in
``pyproject.toml`` and calls :func:`autotl_backbones` once at start-up.  The
plugin returns data (a frozen :class:`autotl.BackboneSpec` per backbone: VGG16
from ``keras.applications`` here, and a hand-written network in
:mod:`autotl_example_backbone.handwritten`); it
never subclasses anything of autotl's, and it imports Keras only inside the
functions autotl calls when it builds a model, so ``autotl plugins`` stays fast.

VGG16 is a plain stack of five convolution blocks, each ending in a max-pool:
every ``blockN_pool`` output is the only tensor the layers above it see, so
"unfreeze 2 blocks" means block4 and block5, and autotl can cache the
activations at ``block3_pool`` for a trial that fine-tunes from there.
"""

from __future__ import annotations

from autotl import BackboneSpec, Preprocessing, hookimpl
from autotl_example_backbone.handwritten import mini_resnet_spec

__version__ = "0.1.0"

#: The file Keras downloads for ``weights="imagenet", include_top=False``; offline,
#: ``autotl --weights-dir DIR`` loads ``DIR/<this name>``.
WEIGHTS_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"


def build_vgg16(input_shape: tuple[int, int, int], weights: str | None):
    """The base without its classifier; ``weights`` is ``None``, ``"imagenet"`` or a weight file's path."""
    import keras

    return keras.applications.VGG16(input_shape=input_shape, include_top=False, weights=weights)


def preprocess_input(x):
    """Keras' own preprocessing for VGG16; ``autotl.testing`` checks ``preprocessing`` against it."""
    import keras

    return keras.applications.vgg16.preprocess_input(x)


@hookimpl
def autotl_backbones() -> list[BackboneSpec]:
    return [
        BackboneSpec(
            name="example_vgg16",
            family="VGG",
            build=build_vgg16,
            input_size=(224, 224),
            input_sizes=((224, 224), (160, 160), (128, 128)),
            # "caffe": RGB to BGR, then the ImageNet mean subtracted per channel, no scaling.
            preprocessing=Preprocessing.caffe(),
            preprocess_input=preprocess_input,
            # block5_pool is the base's last layer, so it is never a boundary: 4 blocks to unfreeze from.
            block_pattern=r"^block\d_pool$",
            weights_file=WEIGHTS_FILE,
            # Pin the bytes once you have the file: sha256sum vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5
            weights_sha256=None,
            description="VGG16: plain 3x3 convolutions, five blocks; a strong texture baseline; caffe preprocessing",
        ),
        mini_resnet_spec(),  # a backbone written by hand: see handwritten.py
    ]
