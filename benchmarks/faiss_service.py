"""The seed's alternative, built to be fair: a Faiss index behind FastAPI, JSON over HTTP/1.1.

`python -m benchmarks.faiss_service --index FILE --params efSearch=64 --port P`

POST /search {"vectors": [[float, ...], ...], "k": 10} -> {"ids": [[int, ...]], "scores": [[float, ...]]}
GET  /healthz -> {"status": "ok", "ntotal": N}

Served the way a production FastAPI app is: uvicorn with uvloop + httptools,
access log off, a pydantic-validated body, one OpenMP thread per single-query
search (Faiss's advice for serving; two threads on two cores stalled single
queries for milliseconds here), a sync endpoint (FastAPI runs it in
its thread pool, and Faiss releases the GIL while searching, so concurrent
requests search in parallel), and the response built with JSONResponse
directly instead of FastAPI's slower generic encoder.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from benchmarks import faiss_index

CORES = os.cpu_count() or 1
MAX_K = 100
MAX_BATCH = 1024


class SearchRequest(BaseModel):
    """The request body: a batch of query vectors and how many neighbours each."""

    vectors: list[list[float]] = Field(min_length=1, max_length=MAX_BATCH)
    k: int = Field(default=10, ge=1, le=MAX_K)


def create_app(index):
    """The FastAPI application around a loaded, configured Faiss index."""
    import faiss
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import JSONResponse

    app = FastAPI(title="faiss-search", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "ntotal": int(index.ntotal)}

    @app.post("/search")
    def search(request: SearchRequest) -> JSONResponse:
        vectors = np.asarray(request.vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != index.d:
            raise HTTPException(400, f"vectors must have shape [batch, {index.d}]")
        # OpenMP's thread count is per calling thread: set it in the pool thread that searches.
        faiss.omp_set_num_threads(1 if len(vectors) == 1 else CORES)
        scores, rows = index.search(vectors, request.k)
        return JSONResponse({"ids": rows.tolist(), "scores": scores.tolist()})

    return app


def main(argv: list[str] | None = None) -> int:
    """Loads the index, applies the search parameters, serves until SIGTERM/SIGINT."""
    import faiss
    import uvicorn

    p = argparse.ArgumentParser(prog="python -m benchmarks.faiss_service", description=__doc__.splitlines()[0])
    p.add_argument("--index", type=Path, required=True, help="a file written by faiss.write_index")
    p.add_argument("--params", default="", help="search settings, e.g. efSearch=64 or nprobe=8,k_factor=32")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8600)
    args = p.parse_args(argv)
    index = faiss.read_index(str(args.index))
    faiss_index.apply(index, faiss_index.parse(args.params))
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    # Keep-alive 75 s (uvicorn's 5 s default closes connections a benchmark round leaves idle).
    uvicorn.run(
        create_app(index),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
        timeout_keep_alive=75,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
