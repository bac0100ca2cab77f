"""Pure ASGI middleware (never BaseHTTPMiddleware: it breaks streaming)."""
