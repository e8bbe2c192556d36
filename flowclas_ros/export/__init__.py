"""Export: a trained FlowCLAS model -> a calibrated model bundle (:mod:`flowclas_ros.bundle`).

:mod:`.calibration` (threshold and display range), :mod:`.bundle` (``write_bundle``: graph,
weights, manifest), :mod:`.export` (a checkpoint, end to end: what the ``export`` command runs).
"""
from .bundle import write_bundle


def __getattr__(name):
    # the reader's names (load_bundle, Bundle, ...) moved to flowclas_ros.bundle: warn there
    from . import bundle

    return getattr(bundle, name)


__all__ = ["write_bundle"]
