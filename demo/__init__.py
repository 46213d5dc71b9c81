"""Click-to-segment demo on the runtime."""
