"""Backbones: finding the plugins that declare them, their weights, their preprocessing.

:mod:`~autotl.backbones.registry` builds the pluggy manager (built-ins,
entry points, ``--plugin`` modules) and checks every
:class:`~autotl.spec.BackboneSpec` as it is registered;
:mod:`~autotl.backbones.weights` says where a backbone's weights come from and
hashes the bytes; :mod:`~autotl.backbones.preprocess` turns a spec's
preprocessing into built-in Keras layers.  The plugin contract itself stays at
``autotl.spec``, ``autotl.hookspec`` and ``autotl.testing``, where plugins
import it.
"""
