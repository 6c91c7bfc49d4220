"""`llama-edge serve`: an OpenAI-compatible HTTP server on the edge runtime.

One loaded model, a pool of `parallel` sessions (each with its KV cache, allocated at start),
a bounded queue of requests waiting for a session, decoding in worker threads (the kernels
release the GIL), cancellation when a client goes away. Built on Starlette (routing, requests,
responses) and uvicorn (the HTTP server); needs the `serve` extra.

    config.py     ServeConfig: the command's options and the request limits
    errors.py     APIError: OpenAI-style error JSON with the right status
    schemas.py    request bodies parsed and validated into typed requests
    jobs.py       a validated request -> prompt ids + sampling parameters (the task seam)
    pool.py       the session pool, its queue, and generation in worker threads
    generating.py the response of a generating request (wait, run, stream or collect)
    responses.py  OpenAI response / chunk bodies and server-sent events
    metrics.py    Prometheus counters, gauges and histograms
    app.py        the Starlette application: routes, auth, request log
    server.py     load the model, bind, run uvicorn
"""

from .config import ServeConfig

__all__ = ["ServeConfig"]
