"""Recall, latency and throughput benchmarks of scann-serving against exact search and FastAPI + Faiss.

`python -m benchmarks run --profile quick|full [--out DIR]`; see benchmarks/README.md.
"""
