"""convert_parity: kzoo.convert on the full-size DDPM CIFAR-10 UNet2DModel (35.7M parameters).

Two steps in two venvs, because the torch venv has no TensorFlow and kzoo's has
no torch:

1. `make` (torch + diffusers): builds diffusers' `UNet2DModel` with the
   configuration of google/ddpm-cifar10-32 (block_out_channels (128, 256, 256,
   256), 2 resnets per level, one-head attention at 16x16, downsample_padding 0,
   sines first, freq_shift 1, norm_eps 1e-6) and random weights (torch's
   initialisation, every parameter then perturbed by N(0, 0.02) so the GroupNorm
   affines are not the identity), saves it with `save_pretrained` and writes the
   PyTorch outputs on 4 fixed NHWC inputs to `parity.npz`.
2. `compare` (kzoo): times `kzoo.convert.from_diffusers` on that folder (read the
   safetensors file, build the kzoo UNet, load the weights), runs the converted
   model on the same inputs and prints one JSON line: the max abs error against
   PyTorch and the conversion time.

Run from the repository root:

    /work/torch-venv/bin/python -m benchmarks.convert_parity make --dir /tmp/ddpm-cifar10
    .venv/bin/python -m benchmarks.convert_parity compare --dir /tmp/ddpm-cifar10 \\
        --out benchmarks/results/2026-12-07-convert_parity.jsonl
"""

import argparse
import json
import os
import sys
import time

import numpy as np

# google/ddpm-cifar10-32's unet config (the keys that differ from UNet2DModel's defaults).
CIFAR10_CONFIG = dict(
    sample_size=32,
    block_out_channels=(128, 256, 256, 256),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None,
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    norm_eps=1e-6,
)
BATCH = 4
TIMESTEPS = (0.0, 250.0, 600.0, 999.0)


def make(folder, seed=0):
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    model = UNet2DModel(**CIFAR10_CONFIG).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
    model.save_pretrained(folder, safe_serialization=True)
    x = np.random.default_rng(seed).normal(size=(BATCH, 32, 32, 3)).astype(np.float32)
    timesteps = np.array(TIMESTEPS, np.float32)
    start = time.perf_counter()
    with torch.no_grad():
        out = model(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(timesteps))
    torch_call_s = time.perf_counter() - start
    np.savez(
        os.path.join(folder, "parity.npz"),
        x=x,
        timesteps=timesteps,
        output=out.sample.numpy().transpose(0, 2, 3, 1),
    )
    info = {
        "params": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
        "torch_call_s": round(torch_call_s, 3),
    }
    with open(os.path.join(folder, "make.json"), "w") as f:
        json.dump(info, f)
    print(json.dumps(info))


def compare(folder, out=None):
    import keras

    from benchmarks._timing import cpu_model
    from kzoo.convert import from_diffusers

    reference = np.load(os.path.join(folder, "parity.npz"))
    with open(os.path.join(folder, "make.json")) as f:
        made = json.load(f)
    start = time.perf_counter()
    model = from_diffusers(folder)
    convert_s = time.perf_counter() - start
    start = time.perf_counter()
    output = np.asarray(model([reference["x"], reference["timesteps"]]))
    call_s = time.perf_counter() - start
    error = np.abs(output - reference["output"])
    row = {
        "benchmark": "convert_parity",
        "source": "diffusers UNet2DModel, google/ddpm-cifar10-32 config, random weights",
        "params_torch": made["params"],
        "params_kzoo": model.count_params(),
        "batch": BATCH,
        "timesteps": list(TIMESTEPS),
        "max_abs_error": float(error.max()),
        "mean_abs_error": float(error.mean()),
        "output_max_abs": float(np.abs(reference["output"]).max()),
        "convert_s": round(convert_s, 2),
        "first_call_s": round(call_s, 2),
        "torch": made["torch"],
        "keras": keras.__version__,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
    }
    line = json.dumps(row)
    print(line)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("make", "compare"))
    parser.add_argument("--dir", required=True, help="the checkpoint folder")
    parser.add_argument("--out", help="append the JSON line to this file (compare)")
    args = parser.parse_args(argv)
    if args.step == "make":
        os.makedirs(args.dir, exist_ok=True)
        make(args.dir)
    else:
        compare(args.dir, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
