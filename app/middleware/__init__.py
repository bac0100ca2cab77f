"""Pure ASGI middleware (never the request-buffering base-class middleware: it breaks streaming)."""
