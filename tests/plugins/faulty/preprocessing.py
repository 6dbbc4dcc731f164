"""Declares caffe preprocessing while its own preprocess_input scales to [-1, 1]."""

from __future__ import annotations

from autotl import Preprocessing, hookimpl
from faulty._base import small_spec


@hookimpl
def autotl_backbones():
    return [small_spec("faulty_preprocessing", preprocessing=Preprocessing.caffe())]
