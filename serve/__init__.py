"""The segmentation service: HTTP API (FastAPI) over the runtime, sessions, limits, metrics, and Ray Serve.

Imports only `sammed_edge.runtime`; needs the `serve` extra (and `ray` for Ray Serve). See docs/serving.md.
"""
