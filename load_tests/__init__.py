"""Load tools: Locust scenarios (``locustfile.py``, ``run_locust.py``) and the benchmark
against a naive sse-starlette hub (``benchmark.py``, ``generator.py``, ``baseline_app.py``)."""

__all__: list[str] = []
