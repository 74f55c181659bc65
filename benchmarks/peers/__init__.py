"""kzoo's PyTorch peers: the workloads of benchmarks/WORKLOADS.md in diffusers and
vector-quantize-pytorch, timed as `benchmarks.run` times kzoo, one JSON line each.

Run with a Python that has torch, diffusers and vector-quantize-pytorch (a venv
outside the repository; README.md, "Benchmarks", says how to make one), from the
repository root:

    PEER_PYTHON -m benchmarks.peers --workload unet_train --peak-flops 3e11
    PEER_PYTHON -m benchmarks.peers --workload all --precision autocast_bfloat16

`specs` holds the workload table (shapes, batches, step counts, FLOP accounting)
and imports nothing; `harness` parses the command line and assembles the rows,
importing torch only to run; `workloads` builds the torch models.
"""
