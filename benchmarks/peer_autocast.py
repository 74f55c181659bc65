"""The PyTorch peers of shared/bench/peers.py under bfloat16 autocast: the fair partner of
`benchmarks.run --precision mixed_bfloat16`.

peers.py times float32 only. On a CPU with bfloat16 units (AMX, AVX512-BF16) kzoo's
`mixed_bfloat16` policy is ~2x faster than float32, so comparing it with the float32
peer would credit kzoo with a precision change. This runs peers.py unchanged except
that each workload's step (and `unet_sample`'s single denoiser call) runs inside
`torch.autocast("cpu", dtype=torch.bfloat16)`, torch's mixed precision (weights and
optimizer stay float32, as under Keras' policy). Rows carry
`"precision": "autocast_bfloat16"`.

Run with the peer venv (torch, diffusers, vector-quantize-pytorch), not kzoo's:

    PEER_PYTHON benchmarks/peer_autocast.py ../shared/bench/peers.py --workload unet_train

Every argument after the path of peers.py goes to peers.py's own command line. The
extra workloads of `benchmarks/peer_extra.py` (`unet_sample_b1`) are registered too.
"""

import functools
import importlib.util
import os
import sys

# Run as a script, this folder leads sys.path, and its profile.py would shadow the
# standard library's `profile` (which torch imports): drop it.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

PRECISION = "autocast_bfloat16"


def _peer_extra():
    """benchmarks/peer_extra.py (loaded by path: this folder is off sys.path, above)."""
    path = os.path.join(_HERE, "peer_extra.py")
    spec = importlib.util.spec_from_file_location("peer_extra", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def autocast_builder(build):
    """Wrap a peers.py workload builder so the callables it returns run under autocast."""
    import torch

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return fn(*args, **kwargs)

        return run

    @functools.wraps(build)
    def built(args):
        workload = build(args)
        for key in ("step", "denoiser"):
            if key in workload:
                workload[key] = wrap(workload[key])
        workload["config"] = {**workload.get("config", {}), "precision": PRECISION}
        return workload

    return built


def main(argv):
    if len(argv) < 2:
        raise SystemExit("usage: peer_autocast.py PATH/TO/peers.py [peers.py arguments ...]")
    extra = _peer_extra()
    peers = extra.register(extra.load_peers(argv[1]))  # peers.py's workloads + unet_sample_b1
    for name, build in list(peers.WORKLOADS.items()):
        if name != "matmul_peak":  # the peak stays float32: one denominator for both sides
            peers.WORKLOADS[name] = autocast_builder(build)
    run_workload = peers.run_workload

    def tagged(name, args, peak_flops):
        row = run_workload(name, args, peak_flops)
        # The wrapped builders put the precision in the config; the peak has none.
        row["precision"] = row["config"].get("precision", "float32")
        return row

    peers.run_workload = tagged
    peers.main(argv[2:])


if __name__ == "__main__":
    main(sys.argv)
