"""The HTTP adapter: KServe v2 / Open Inference Protocol in front of the engine.

decode (`codec`) -> admission (`admission`) -> `Engine.submit` -> encode (`codec`), with
Prometheus metrics and Triton statistics (`metrics`) and a lane watchdog (`health`).
`app` (starlette, uvicorn: the `server` extra) is imported only by `recsched serve`.
"""
