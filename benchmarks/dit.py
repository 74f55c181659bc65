"""dit_train, dit_train_memory: DiT-S/2 training steps on 32x32x4 latents, time and peak memory.

The peer is diffusers' `DiTTransformer2DModel` of benchmarks/peers/: hidden
384, 12 layers, 6 heads, patch 2 (256 tokens), 1000 classes, adaLN-Zero, MLP
ratio 4, GELU(tanh), eps output only. kzoo's `DiT.from_size("S/2")` is the same
network with the DiT paper's parameter count: 32,957,200 by `count_params()`
(32,858,896 trainable plus the fixed 256x384 sin-cos position table, which the
peer keeps as a buffer). The peer has 39,798,928 parameters because diffusers
gives every block its own timestep MLP and label table (630,912 parameters;
kzoo and the paper share one): 32,858,896 + 11 x 630,912 = 39,798,928. The
extra compute is 11 more timestep MLPs on 32 vectors, under 0.1% of a step.

- **dit_train**: one AdamW step on the eps-MSE of a batch of 32 latents with
  labels in [0, 1000), as `benchmarks._diffusion` describes.
- **dit_train_memory**: peak memory of dit_train steps with effective batch 32,
  (a) as one batch of 32 and (b) as gradient accumulation 4 x 8 (Keras'
  `AdamW(..., gradient_accumulation_steps=4)`, four `train_step` calls on
  micro-batches of 8 per optimizer step). Each setting runs in a fresh
  subprocess (`python -m benchmarks.dit --memory-child SPEC`, both at once):
  build the model and optimizer, read the resident set size (RSS), trace, run
  `steps` optimizer steps, read the peak RSS (`VmHWM` of `/proc/self/status`,
  the high-water mark of the process's own address space; `ru_maxrss` is no
  use here: Linux carries the parent's high-water mark into a forked and
  exec'd child, so every child would report the parent's peak, 8 GB after an
  in-process dit_train). CPU TensorFlow has no allocator peak, so the
  row reports the absolute peak RSS and the peak minus the RSS after building
  (activations, gradients, optimizer temporaries and the traced graph). On a
  GPU the allocator's `get_memory_info("GPU:0")["peak"]` after
  `reset_memory_stats` is reported as well. Both settings use one fixed batch
  (the accumulation setting feeds its micro-batch of 8 four times): memory
  and compute do not depend on the values.
"""

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from benchmarks._diffusion import compiled_train_step, count_elements, train_workload
from kzoo.models import DiT

DEFAULTS = {"dit_train": (0, 3), "dit_train_memory": (0, 2)}
BATCH = 32
ACCUMULATION_STEPS = 4
SIZE = "S/2"
DIT_KWARGS = dict(input_shape=(32, 32, 4), num_classes=1000, learn_sigma=False)
PARAMS = 32_957_200  # count_params(): 32,858,896 trainable + 98,304 fixed positions
# diffusers DiTTransformer2DModel(**peers.specs.DIT_KW).parameters(), printed by a peer run.
PEER_PARAMS = 39_798_928
PARAMS_NOTE = (
    f"params: kzoo DiT-S/2 {PARAMS:,} by count_params() (the paper's 33M; trainable "
    f"32,858,896 + the fixed 256x384 sin-cos positions), peer {PEER_PARAMS:,}: diffusers gives "
    "each of the 12 blocks its own timestep MLP and label table (kzoo and the paper share one); "
    "that adds parameters, not compute (<0.1% of the step's FLOPs)"
)
REPO_ROOT = Path(__file__).resolve().parent.parent
CHILD_TIMEOUT_S = 3600


def make_dit(model_kwargs=None):
    """DiT-S/2 of the benchmark (or a `DiT(**model_kwargs)`, for tests)."""
    if model_kwargs is not None:
        return DiT(**model_kwargs)
    dit = DiT.from_size(SIZE, **DIT_KWARGS)
    if dit.count_params() != PARAMS:
        raise AssertionError(
            f"The benchmark DiT-S/2 must have {PARAMS:,} parameters. "
            f"Received: {dit.count_params():,}"
        )
    return dit


def _batch(dit, batch, seed=0):
    rng = np.random.default_rng(seed)
    x0 = tf.constant(rng.standard_normal((batch, *dit.latent_shape), dtype=np.float32))
    labels = tf.constant(rng.integers(0, dit.num_classes, size=(batch,), dtype=np.int32))
    return x0, labels


def _config(dit):
    return {
        "model": "kzoo.models.DiT",
        "kwargs": dit.get_config(),
        "tokens": (dit.latent_shape[0] // dit.patch_size) * (dit.latent_shape[1] // dit.patch_size),
        "count_params": dit.count_params(),
        "peer_params": PEER_PARAMS,
        "params_note": PARAMS_NOTE,
    }


def build(name, jit_compile, batch=BATCH, model_kwargs=None):
    """Build `dit_train`.

    Args:
        name: "dit_train" (`dit_train_memory` is measured by `measure_memory`).
        jit_compile: passed to `tf.function`.
        batch: latents per step.
        model_kwargs: `DiT` arguments (default: DiT-S/2 of the benchmark; tests
            pass a tiny one).

    Returns:
        `Workload` whose step is one optimizer step.
    """
    if name != "dit_train":
        raise ValueError(f"`build` makes dit_train only. Received: name={name!r}")
    dit = make_dit(model_kwargs)
    item = f"{'x'.join(map(str, dit.latent_shape))} latent"
    return train_workload(dit, _batch(dit, batch), jit_compile, item, _config(dit), PARAMS_NOTE)


# --------------------------------------------------------------------------
# Peak memory: one fresh subprocess per setting
# --------------------------------------------------------------------------
def memory_settings(effective_batch=BATCH, accumulation_steps=ACCUMULATION_STEPS):
    """`{name: (micro_batch, gradient_accumulation_steps or None)}` of the two settings."""
    if effective_batch % accumulation_steps:
        raise ValueError(
            f"`accumulation_steps` must divide `effective_batch`={effective_batch}. "
            f"Received: accumulation_steps={accumulation_steps}"
        )
    micro = effective_batch // accumulation_steps
    return {
        f"batch{effective_batch}": (effective_batch, None),
        f"accum{accumulation_steps}x{micro}": (micro, accumulation_steps),
    }


def measure_memory(
    jit_compile,
    steps,
    model_kwargs=None,
    effective_batch=BATCH,
    accumulation_steps=ACCUMULATION_STEPS,
):
    """Peak memory of `steps` optimizer steps per setting, each in a fresh subprocess.

    Args:
        jit_compile: `tf.function(jit_compile=...)` of the training step.
        steps: optimizer steps per setting (`accumulation_steps` calls each with
            accumulation).
        model_kwargs: `DiT` arguments (default DiT-S/2; tests pass a tiny one).
        effective_batch: images per optimizer step.
        accumulation_steps: micro-batches per optimizer step of the second setting.

    Returns:
        dict of row fields: `settings` (one dict per setting, see `_memory_child`),
        `effective_batch`, `optimizer_steps`, the accumulation/one-batch ratios,
        `params`, `config`, `memory_method`, `notes`.
    """
    settings = memory_settings(effective_batch, accumulation_steps)
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Two processes may share one GPU: each takes memory as it needs it.
    env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
    children = {}
    for name, (micro_batch, accumulation) in settings.items():
        spec = {
            "setting": name,
            "micro_batch": micro_batch,
            "gradient_accumulation_steps": accumulation,
            "optimizer_steps": steps,
            "jit_compile": bool(jit_compile),
            "model_kwargs": model_kwargs,
        }
        command = [sys.executable, "-m", "benchmarks.dit", "--memory-child", json.dumps(spec)]
        # Both at once: peak RSS is per process, and the import/trace wait halves.
        children[name] = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    results = {}
    for name, child in children.items():
        try:
            stdout, stderr = child.communicate(timeout=CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            stdout, stderr = child.communicate()
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        if child.returncode != 0 or not lines:
            tail = " | ".join(stderr.strip().splitlines()[-3:])
            raise RuntimeError(f"memory child {name!r} exited {child.returncode}: {tail}")
        results[name] = json.loads(lines[-1])

    one_batch, accumulated = (results[name] for name in settings)
    info = one_batch.pop("model")
    accumulated.pop("model")

    def ratio(key):
        a, b = accumulated.get(key), one_batch.get(key)
        return a / b if a and b else None

    device = one_batch["device"]
    return {
        "effective_batch": effective_batch,
        "optimizer_steps": steps,
        "settings": results,
        "accum_over_batch_peak_rss": ratio("peak_rss_bytes"),
        "accum_over_batch_peak_minus_build": ratio("peak_minus_build_bytes"),
        "accum_over_batch_device_peak": ratio("device_peak_bytes"),
        "device": device,
        "params": info["params"],
        "non_trainable_elements": info["non_trainable_elements"],
        "config": {
            **info["config"],
            "optimizer": "keras AdamW(1e-4, weight_decay=0.01, epsilon=1e-8), "
            f"gradient_accumulation_steps={accumulation_steps} in the accumulation setting",
            "settings": {
                name: {"micro_batch": m, "gradient_accumulation_steps": a}
                for name, (m, a) in settings.items()
            },
        },
        "memory_method": "one fresh subprocess per setting (run together): RSS from "
        "/proc/self/statm after building model + optimizer (rss_after_build_bytes) and after "
        "tracing, peak RSS = VmHWM of /proc/self/status after the steps (not ru_maxrss: "
        "Linux keeps the parent's high-water mark in it across fork + exec); "
        "peak_minus_build_bytes = peak - rss_after_build. GPU: tf.config.experimental."
        "get_memory_info('GPU:0')['peak'] after reset_memory_stats (device_peak_bytes)",
        "notes": PARAMS_NOTE,
    }


def _rss_bytes():
    """Current resident set size of this process (Linux /proc), or None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _peak_rss_bytes():
    """High-water mark of this process's RSS since its `exec` (Linux `VmHWM`).

    `ru_maxrss` would include the parent's peak: Linux keeps the old address
    space's high-water mark in it across fork + exec. Elsewhere (no /proc) it is
    the fallback (kilobytes on Linux, bytes on macOS).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _memory_child(spec):
    """One setting in this (fresh) process; returns the JSON-able measurement."""
    start = time.perf_counter()
    gpu = bool(tf.config.list_physical_devices("GPU"))
    dit = make_dit(spec["model_kwargs"])
    accumulation = spec["gradient_accumulation_steps"]
    model, function = compiled_train_step(dit, spec["jit_compile"], accumulation)
    data = _batch(dit, spec["micro_batch"])
    gc.collect()
    out = {
        "setting": spec["setting"],
        "micro_batch": spec["micro_batch"],
        "gradient_accumulation_steps": accumulation or 1,
        "effective_batch": spec["micro_batch"] * (accumulation or 1),
        "optimizer_steps": spec["optimizer_steps"],
        "train_step_calls": spec["optimizer_steps"] * (accumulation or 1),
        "device": "GPU:0" if gpu else "CPU",
        "rss_after_build_bytes": _rss_bytes(),
        "peak_rss_after_build_bytes": _peak_rss_bytes(),
    }
    if gpu:
        tf.config.experimental.reset_memory_stats("GPU:0")
        out["device_after_build_bytes"] = tf.config.experimental.get_memory_info("GPU:0")["current"]
    function.get_concrete_function(data)
    out["rss_after_trace_bytes"] = _rss_bytes()
    for _ in range(out["train_step_calls"]):
        logs = function(data)
    out["loss"] = float(logs["loss"])
    out["optimizer_iterations"] = int(model.optimizer.iterations.numpy())
    out["peak_rss_bytes"] = _peak_rss_bytes()
    out["rss_after_steps_bytes"] = _rss_bytes()
    if out["rss_after_build_bytes"] is not None:
        out["peak_minus_build_bytes"] = out["peak_rss_bytes"] - out["rss_after_build_bytes"]
    if out["rss_after_trace_bytes"] is not None:
        out["peak_minus_trace_bytes"] = out["peak_rss_bytes"] - out["rss_after_trace_bytes"]
    if gpu:
        out["device_peak_bytes"] = tf.config.experimental.get_memory_info("GPU:0")["peak"]
        out["device_peak_minus_build_bytes"] = (
            out["device_peak_bytes"] - out["device_after_build_bytes"]
        )
    out["wall_s"] = round(time.perf_counter() - start, 1)
    out["model"] = {
        "params": count_elements(dit.trainable_variables),
        "non_trainable_elements": count_elements(dit.non_trainable_variables),
        "config": _config(dit),
    }
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description="dit_train_memory child process")
    parser.add_argument("--memory-child", required=True, metavar="SPEC", help="JSON spec")
    args = parser.parse_args(argv)
    print(json.dumps(_memory_child(json.loads(args.memory_child))), flush=True)


if __name__ == "__main__":
    main()
