"""convert_parity: kzoo.convert on full-size diffusers models, random weights.

`--model`:
- `unet_cifar10`: `UNet2DModel` with google/ddpm-cifar10-32's configuration
  (block_out_channels (128, 256, 256, 256), 2 resnets per level, one-head
  attention at 16x16, downsample_padding 0, sines first, freq_shift 1, norm_eps
  1e-6; 35.7M parameters), 4 images at timesteps 0 to 999;
- `dit_xl_2`: `DiTTransformer2DModel` with its defaults, DiT-XL/2 at 256 px
  (32x32x4 latents, 28 blocks of width 1152, learned sigma, 1000 classes;
  675M parameters), 2 latents with labels 207 and 1000 (the null class);
- `vq_f4`: `VQModel` in the LDM VQ-f4 layout (block_out_channels (128, 256,
  512), 2 resnets per level, 3 latent channels, 8192 codes, 256x256 images),
  2 images: latents, the codes chosen, and the decoder on PyTorch's codes.

Two steps in two venvs, because the torch venv has no TensorFlow and kzoo's has
no torch:

1. `make` (torch + diffusers): builds the model with random weights (torch's
   initialisation, every parameter then perturbed by N(0, 0.02) so norm affines
   are not the identity), saves it with `save_pretrained` and writes the PyTorch
   outputs on fixed NHWC inputs to `parity.npz`.
2. `compare` (kzoo): times `kzoo.convert.from_diffusers` on that folder (read the
   safetensors file, build the kzoo model, load the weights), runs the converted
   model on the same inputs and prints one JSON line: the max abs error against
   PyTorch and the conversion time.

Run from the repository root, for each model:

    /work/torch-venv/bin/python -m benchmarks.convert_parity make --model unet_cifar10 \\
        --dir /tmp/convert-unet_cifar10
    .venv/bin/python -m benchmarks.convert_parity compare --model unet_cifar10 \\
        --dir /tmp/convert-unet_cifar10 --out benchmarks/results/2026-12-07-convert_parity.jsonl
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
VQ_F4_CONFIG = dict(
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(128, 256, 512),
    layers_per_block=2,
    latent_channels=3,
    num_vq_embeddings=8192,
    sample_size=256,
)
SOURCES = {
    "unet_cifar10": "UNet2DModel, google/ddpm-cifar10-32 configuration",
    "dit_xl_2": "DiTTransformer2DModel, DiT-XL/2 256 px (its defaults, out_channels 8)",
    "vq_f4": "VQModel, LDM VQ-f4 layout",
}
MODELS = tuple(SOURCES)
TIMESTEPS = {"unet_cifar10": (0.0, 250.0, 600.0, 999.0), "dit_xl_2": (10.0, 700.0)}


def _nchw(x):
    import torch

    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _nhwc(tensor):
    return tensor.numpy().transpose(0, 2, 3, 1)


def make(model_name, folder, seed=0):
    import torch
    from diffusers import DiTTransformer2DModel, UNet2DModel, VQModel

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if model_name == "unet_cifar10":
        model = UNet2DModel(**CIFAR10_CONFIG)
    elif model_name == "dit_xl_2":
        model = DiTTransformer2DModel(out_channels=8)
    else:
        model = VQModel(**VQ_F4_CONFIG)
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
    model.save_pretrained(folder, safe_serialization=True)
    arrays = {}
    start = time.perf_counter()
    with torch.no_grad():
        if model_name == "vq_f4":
            x = rng.uniform(-1, 1, size=(2, 256, 256, 3)).astype(np.float32)
            latents = model.encode(_nchw(x)).latents
            _, _, (_, _, indices) = model.quantize(latents)
            arrays["latents"] = _nhwc(latents)
            arrays["indices"] = indices.numpy().reshape(arrays["latents"].shape[:3])
            arrays["output"] = _nhwc(model.decode(latents).sample)
        else:
            size, channels = (32, 3) if model_name == "unet_cifar10" else (32, 4)
            timesteps = np.array(TIMESTEPS[model_name], np.float32)
            x = rng.normal(size=(len(timesteps), size, size, channels)).astype(np.float32)
            kwargs = {}
            if model_name == "dit_xl_2":
                arrays["labels"] = np.array([207, 1000], np.int32)
                kwargs["class_labels"] = torch.from_numpy(arrays["labels"].astype(np.int64))
            out = model(_nchw(x), torch.from_numpy(timesteps), **kwargs).sample
            arrays.update(timesteps=timesteps, output=_nhwc(out))
    torch_call_s = time.perf_counter() - start
    np.savez(os.path.join(folder, "parity.npz"), x=x, **arrays)
    info = {
        "model": model_name,
        "params": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
        "torch_call_s": round(torch_call_s, 3),
    }
    with open(os.path.join(folder, "make.json"), "w") as f:
        json.dump(info, f)
    print(json.dumps(info))


def compare(model_name, folder, out=None):
    import keras

    from benchmarks._timing import cpu_model
    from kzoo.convert import from_diffusers

    reference = np.load(os.path.join(folder, "parity.npz"))
    with open(os.path.join(folder, "make.json")) as f:
        made = json.load(f)
    if made["model"] != model_name:
        raise ValueError(f"{folder} holds {made['model']}. Received: --model={model_name}")
    start = time.perf_counter()
    model = from_diffusers(folder)
    convert_s = time.perf_counter() - start
    start = time.perf_counter()
    extra = {}
    if model_name == "vq_f4":
        latents = np.asarray(model.encoder(reference["x"]))
        indices = np.asarray(model.quantizer.get_code_indices(latents))
        output = np.asarray(model.decode(reference["indices"]))  # PyTorch's codes
        extra = {
            "latents_max_abs_error": float(np.abs(latents - reference["latents"]).max()),
            "code_agreement": float(np.mean(indices == reference["indices"])),
            "output": "decoder on PyTorch's codes",
        }
    else:
        inputs = [reference["x"], reference["timesteps"]]
        if "labels" in reference:
            inputs.append(reference["labels"])
        output = np.asarray(model(inputs))
        extra = {"timesteps": reference["timesteps"].tolist()}
    call_s = time.perf_counter() - start
    error = np.abs(output - reference["output"])
    # The kzoo count adds non-trainable tables diffusers keeps outside its
    # parameters (DiT's fixed positions); trainable weights are compared.
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    row = {
        "benchmark": "convert_parity",
        "model": model_name,
        "source": f"diffusers {SOURCES[model_name]}, random weights",
        "params_torch": made["params"],
        "params_kzoo_trainable": trainable,
        "batch": int(reference["x"].shape[0]),
        **extra,
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
    parser.add_argument("--model", choices=MODELS, default="unet_cifar10")
    parser.add_argument("--dir", required=True, help="the checkpoint folder")
    parser.add_argument("--out", help="append the JSON line to this file (compare)")
    args = parser.parse_args(argv)
    if args.step == "make":
        os.makedirs(args.dir, exist_ok=True)
        make(args.model, args.dir)
    else:
        compare(args.model, args.dir, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
