"""Inference backends behind one protocol; each SDK is imported only when its backend is used."""

from .base import BACKENDS, Backend, BackendError, available_backends, load_backend

__all__ = ["BACKENDS", "Backend", "BackendError", "available_backends", "load_backend"]
