"""autotl's built-in plugins: backbones from ``keras.applications`` and sample data sets.

Each module uses only the public hook specification (``autotl.hookimpl``) and
the spec dataclasses, exactly as a plugin from another package would.
"""
