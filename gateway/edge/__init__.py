"""The HTTP edge: the ASGI app that verifies, parses, stores and acknowledges platform requests,
and its middleware."""
