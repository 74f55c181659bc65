"""Peer workloads beyond shared/bench/peers.py's own, built from its parts.

- **unet_sample_b1**: peers.py's `unet_sample` (diffusers `UNet2DModel` +
  `DDIMScheduler`, 50 steps, eta 0, the same Python loop) for one image instead of
  a batch of 8: the latency of a single request. It runs through peers.py's own
  `unet_sample` path (FLOP count of one denoiser call x 50, warm-up with single
  calls, ten single denoiser calls timed after), so its row has every field of a
  `unet_sample` row; only `workload` and the batch differ.

peers.py itself is not changed: this loads it, registers the extra workloads and
runs its `main`. Run with the peer venv (torch, diffusers), not kzoo's:

    PEER_PYTHON benchmarks/peer_extra.py ../shared/bench/peers.py --json --workload unet_sample_b1

Every argument after the path of peers.py goes to peers.py's own command line;
its own workloads run unchanged. `benchmarks/peer_autocast.py` registers the same
extras, so they also run under bfloat16 autocast.
"""

import importlib.util
import os
import sys

# Run as a script, this folder leads sys.path, and its profile.py would shadow the
# standard library's `profile` (which torch imports): drop it.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

# name -> (batch, DEFAULTS entry): variants of peers.py's unet_sample.
SAMPLE_VARIANTS = {"unet_sample_b1": (1, (1, 5))}


def load_peers(path):
    spec = importlib.util.spec_from_file_location("peers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sample_builder(peers, batch):
    """peers.py's `build_unet_sample` with another batch (the same code otherwise)."""

    def build(args):
        import torch
        from diffusers import DDIMScheduler

        unet = peers.make_unet().eval()
        sched = DDIMScheduler()
        n_steps = 50
        x_t = torch.randn(batch, 3, 32, 32)
        t_single = torch.tensor([999] * batch)

        @torch.no_grad()
        def sample():
            sched.set_timesteps(n_steps)
            x = x_t
            for t in sched.timesteps:
                eps = unet(x, t).sample
                x = sched.step(eps, t, x, eta=0.0).prev_sample
            return x

        @torch.no_grad()
        def denoiser_call():
            return unet(x_t, t_single).sample

        return dict(
            step=sample,
            items_per_step=batch,
            item="32x32x3 image (50-step DDIM sample)",
            denoiser=denoiser_call,
            denoiser_calls_per_step=n_steps,
            peer=("diffusers", peers.version("diffusers")),
            config={
                "model": "UNet2DModel",
                "kwargs": peers.diffusers_config(unet),
                "scheduler": "DDIMScheduler",
                "scheduler_config": peers.diffusers_config(sched),
                "num_inference_steps": n_steps,
                "eta": 0.0,
                "batch": batch,
                "grad": "torch.no_grad()",
                "built_by": "benchmarks/peer_extra.py (peers.py's unet_sample, batch changed)",
            },
            counts=peers.count_params(unet),
        )

    return build


def register(peers):
    """Add the extra workloads to a loaded peers.py module (its WORKLOADS, DEFAULTS, runner)."""
    for name, (batch, defaults) in SAMPLE_VARIANTS.items():
        peers.WORKLOADS[name] = _sample_builder(peers, batch)
        peers.DEFAULTS[name] = defaults
    run_workload = peers.run_workload

    def run(name, args, peak_flops):
        if name not in SAMPLE_VARIANTS:
            return run_workload(name, args, peak_flops)
        # peers.py special-cases the name "unet_sample" (FLOPs per call, single-call
        # timing): run the variant under that name, then rename the row.
        saved = peers.WORKLOADS["unet_sample"], peers.DEFAULTS["unet_sample"]
        peers.WORKLOADS["unet_sample"] = peers.WORKLOADS[name]
        peers.DEFAULTS["unet_sample"] = peers.DEFAULTS[name]
        try:
            row = run_workload("unet_sample", args, peak_flops)
        finally:
            peers.WORKLOADS["unet_sample"], peers.DEFAULTS["unet_sample"] = saved
        row["workload"] = name
        return row

    peers.run_workload = run
    return peers


def main(argv):
    if len(argv) < 2:
        raise SystemExit("usage: peer_extra.py PATH/TO/peers.py [peers.py arguments ...]")
    register(load_peers(argv[1])).main(argv[2:])


if __name__ == "__main__":
    main(sys.argv)
