"""`python -m benchmarks.peers`: see `benchmarks.peers`."""

from benchmarks.peers.harness import main

main()
