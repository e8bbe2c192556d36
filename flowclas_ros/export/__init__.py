"""Model bundles and ONNX export: checkpoint -> bundle directory (see :mod:`.bundle`)."""
from .bundle import (FORMAT, FORMAT_VERSION, Bundle, BundleError, build_torch_model, load_bundle,
                     write_bundle)

__all__ = ["FORMAT", "FORMAT_VERSION", "Bundle", "BundleError", "build_torch_model", "load_bundle",
           "write_bundle"]
