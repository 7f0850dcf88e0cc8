"""Benchmarks for zmqruntime against raw pyzmq, ipyparallel and dask (see README.md).

A package so every benchmark can run as ``python -m benchmarks.<module>`` in its
own process; ``python -m benchmarks.run`` runs them all.
"""
