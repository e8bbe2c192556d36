"""The model bundle: the artifact export writes and the runtime, node and tools load.

* :mod:`.reader` - format, :class:`Bundle`, :func:`load_bundle`, validation (no torch);
* :mod:`.preprocess` / :mod:`.preprocess_torch` - the deployed resize of frames and scores;
* :mod:`.graph` - :class:`ScoreGraph`, what ``model.onnx`` computes, and its input/output names;
* :mod:`.torch_model` - :func:`build_torch_model`, the bundle's model in torch;
* :mod:`.writer`, :mod:`.model_card`, :mod:`.hashing` - the files, used only by export.
"""
from .reader import FORMAT, FORMAT_VERSION, Bundle, BundleError, load_bundle

__all__ = ["FORMAT", "FORMAT_VERSION", "Bundle", "BundleError", "load_bundle"]
