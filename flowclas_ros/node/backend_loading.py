"""Configure's first half: load the bundle, create the backend, warm it up.

The bundle is loaded and validated, the backend created and warmed up, with one fix-it message
for everything that can go wrong.

:func:`load_backend` raises :class:`ConfigureError` (the message says what is wrong and what
to set; ``tb`` the traceback where it is a bug rather than a setting); the node turns it into a
failed configure (:meth:`.anomaly_node.AnomalyNode.on_configure`).
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable


class ConfigureError(RuntimeError):
    """Configure cannot go on: ``str(exc)`` is the one line for the log, ``tb`` a traceback."""

    def __init__(self, message: str, tb: str | None = None):
        super().__init__(message)
        self.tb = tb


@dataclass
class Loaded:
    """What :func:`load_backend` made: the bundle, the backend, and how long the backend took."""

    bundle: Any
    backend: Any
    backend_s: float


def load_backend(path: str, backend: str, device: str, precision: str, options: dict,
                 factory: Callable[..., Any], set_path: str,
                 progress: Callable[[str], None], close: Callable[[Any], None]) -> Loaded:
    """Load the bundle, create the backend and run one warm-up inference.

    The bundle is read from ``path``, the backend made by ``factory(bundle, backend, device,
    precision, **options)``. ``set_path``: the command that sets
    model_path (quoted in messages); ``progress(text)``: what configure is doing now (the
    node's state label); ``close(backend)``: releases a backend whose warm-up failed.
    """
    try:
        from flowclas_ros.bundle.reader import BundleError, load_bundle
        from flowclas_ros.runtime.backend import BackendUnavailable
    except Exception as exc:  # a broken install, not a parameter problem
        raise ConfigureError(f"cannot import the runtime ({exc!r}); reinstall flowclas_ros")
    progress(f"configuring: loading the bundle {path}")
    try:
        bundle = load_bundle(path)
    except FileNotFoundError as exc:  # "model bundle PATH does not exist"
        raise ConfigureError(f"{exc}: set model_path to a bundle folder written by `export` "
                             f"({set_path}), then configure again") from None
    except BundleError as exc:  # "bundle PATH: what is wrong; how to fix it"
        raise ConfigureError(f"{exc}, or use another bundle ({set_path}); then configure "
                             f"again") from None
    except Exception as exc:
        raise ConfigureError(f"cannot read the model bundle at {path}: {exc!r}; set model_path "
                             f"to another bundle ({set_path}), then configure again") from None
    progress(f"configuring: starting the {backend} backend on {device} ({precision}; building a "
             f"TensorRT engine or compiling can take minutes, once: see build_engine)")
    t0 = time.monotonic()
    try:
        be = factory(bundle, backend, device, precision, **options)
    except BackendUnavailable as exc:
        raise ConfigureError(
            f"backend={backend!r} device={device!r} precision={precision!r} is unavailable: "
            f"{exc}; set backend to 'auto' (or an installed one), device to 'cpu' or "
            f"precision to 'fp32', then configure again") from None
    except (FileNotFoundError, BundleError) as exc:
        raise ConfigureError(f"{exc}, or use another bundle ({set_path}); then configure "
                             f"again") from None
    except Exception as exc:
        raise ConfigureError(f"creating the {backend} backend failed: {exc!r}; check backend/"
                             f"device/precision, then configure again",
                             traceback.format_exc()) from None
    backend_s = time.monotonic() - t0
    progress(f"configuring: warm-up of {be.name} on {be.device}")
    try:
        h, w = bundle.input_size
        be.warmup(int(h), int(w))
    except Exception as exc:
        close(be)
        raise ConfigureError(f"warm-up inference on {be.name}/{be.device} failed: {exc!r}; try "
                             f"backend:=torch device:=cpu precision:=fp32, then configure again",
                             traceback.format_exc()) from None
    return Loaded(bundle, be, backend_s)


__all__ = ["ConfigureError", "Loaded", "load_backend"]
