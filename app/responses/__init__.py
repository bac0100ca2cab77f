"""The ``/api/responses`` service: a producer's text (echo, an OpenAI relay) generated once
per run and streamed to every reader of it as SSE, with a cache and conversation history.
The HTTP response that carries any SSE stream is :mod:`app.sse.stream_response`."""
