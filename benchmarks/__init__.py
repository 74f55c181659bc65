"""kzoo benchmarks: the workloads of benchmarks/WORKLOADS.md, one JSON line each.

Run `python -m benchmarks.run --workload all`; see benchmarks/README.md.
"""
