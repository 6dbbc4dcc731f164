"""Image data: the folder, its split and fingerprint, decoding, the test split.

:mod:`~autotl.data.dataset` scans a folder (or a built-in sample), splits and
fingerprints it; :mod:`~autotl.data.manifest` remembers every file read so a
rescan reads only what changed; :mod:`~autotl.data.decoding` decodes images in
worker processes; :mod:`~autotl.data.holdout` holds out and scores the test
split; :mod:`~autotl.data.imbalance` warns when accuracy misleads.
"""
