"""TFDS builders of vitijax (array_record, no TensorFlow): ``synthetic_uv_vitiligo`` and ``uv_vitiligo``.

A subpackage of vitijax, so that grain's worker processes, which unpickle data sources built from
these modules, can import them like any installed module.
"""
