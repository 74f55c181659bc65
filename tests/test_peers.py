"""benchmarks/peers: the PyTorch peers' workload table, FLOP accounting and rows agree with
kzoo's side, and a sitting runs only files of the repository. No torch needed."""

import importlib
import os
import re
import subprocess
import sys

import pytest

from benchmarks import _diffusion, _timing, compare, run
from benchmarks import dit as dit_bench
from benchmarks import matmul_peak as matmul_bench
from benchmarks import unet as unet_bench
from benchmarks import vq as vq_bench
from benchmarks import vqmodel_train as vqmodel_bench
from benchmarks.peers import harness, specs
from kzoo.models import DIT_SIZES, VQVAE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMED = [name for name in run.WORKLOAD_MODULES if name not in run.MEMORY_WORKLOADS]


def test_the_peer_modules_that_tests_read_do_not_import_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"  # `import torch` now raises
        "import benchmarks.peers, benchmarks.peers.specs, benchmarks.peers.harness"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_every_timed_kzoo_workload_has_a_peer_with_the_same_step_counts():
    assert set(specs.DEFAULTS) == set(TIMED)
    assert set(specs.DEFAULTS) == set(compare.ORDER)
    for name in TIMED:
        kzoo_defaults = importlib.import_module(run.WORKLOAD_MODULES[name]).DEFAULTS[name]
        assert specs.DEFAULTS[name] == kzoo_defaults, name
    # matmul_peak's floor, the same on both sides.
    assert specs.steps_for("matmul_peak", 0, 1) == specs.MATMUL_PEAK_MIN == (3, 20)
    assert specs.steps_for("unet_train", None, 4) == (1, 4)
    assert run.DENOISER_CALLS == specs.DENOISER_CALLS


def test_vq_workloads_have_the_same_shapes_and_estimators():
    assert vq_bench.INPUT_SHAPE == specs.VQ_INPUT_SHAPE
    assert vq_bench.CODEBOOK_SIZE == specs.VQ_KWARGS["codebook_size"]
    assert vq_bench.EMBEDDING_DIM == specs.VQ_KWARGS["dim"]
    assert set(vq_bench.VARIANTS) == set(specs.VQ_VARIANTS)
    for name, kzoo in vq_bench.VARIANTS.items():
        peer = specs.VQ_VARIANTS[name]
        # vector-quantize-pytorch: EMA unless ema_update=False; rotation trick by default.
        assert kzoo["decay"] == (None if peer.get("ema_update") is False else peer["decay"])
        rotation = peer.get("rotation_trick", True)
        assert kzoo["gradient_estimator"] == ("rotation" if rotation else "ste"), name


def test_diffusion_workloads_have_the_same_networks_batches_and_optimizer():
    unet = unet_bench.UNET_KWARGS
    size = specs.UNET_KW["sample_size"]
    assert unet["image_shape"] == (size, size, specs.UNET_KW["in_channels"])
    assert unet["channels"] == specs.UNET_KW["block_out_channels"]
    assert unet["num_res_blocks"] == specs.UNET_KW["layers_per_block"]
    attention = tuple(
        size // 2**level
        for level, block in enumerate(specs.UNET_KW["down_block_types"])
        if block.startswith("Attn")
    )
    assert unet["attention_resolutions"] == attention == (16,)
    assert unet["num_heads"] == 1 and specs.UNET_KW["attention_head_dim"] is None
    assert unet["dropout"] == specs.UNET_KW["dropout"]
    assert unet_bench.TRAIN_BATCH == specs.UNET_TRAIN_BATCH
    assert unet_bench.SAMPLE_BATCH == specs.SAMPLE_BATCH
    assert unet_bench.NUM_INFERENCE_STEPS == specs.NUM_INFERENCE_STEPS

    dit, peer = DIT_SIZES[dit_bench.SIZE], specs.DIT_KW
    assert dit["hidden_size"] == peer["num_attention_heads"] * peer["attention_head_dim"]
    assert (dit["depth"], dit["num_heads"], dit["patch_size"]) == (
        peer["num_layers"],
        peer["num_attention_heads"],
        peer["patch_size"],
    )
    size = peer["sample_size"]
    assert dit_bench.DIT_KWARGS["input_shape"] == (size, size, peer["in_channels"])
    assert dit_bench.DIT_KWARGS["num_classes"] == peer["num_embeds_ada_norm"]
    assert dit_bench.DIT_KWARGS["learn_sigma"] is False and peer["out_channels"] == 4
    assert dit_bench.BATCH == specs.DIT_BATCH

    torch_adamw = specs.ADAMW
    assert _diffusion.ADAMW_KWARGS == {
        "learning_rate": torch_adamw["lr"],
        "weight_decay": torch_adamw["weight_decay"],
        "beta_1": torch_adamw["betas"][0],
        "beta_2": torch_adamw["betas"][1],
        "epsilon": torch_adamw["eps"],
    }
    assert _diffusion.SCHEDULE["num_train_timesteps"] == specs.NUM_TRAIN_TIMESTEPS


def test_vqmodel_workload_has_the_same_autoencoder():
    model = VQVAE()  # the benchmark's model: VQVAE's defaults
    peer = specs.VQMODEL_KW
    size = peer["sample_size"]
    assert model.image_shape == (size, size, peer["in_channels"])
    assert tuple(model.channels) == peer["block_out_channels"]
    assert model.num_res_blocks == peer["layers_per_block"]
    assert model.codebook_size == peer["num_vq_embeddings"]
    assert model.embedding_dim == peer["vq_embed_dim"] == peer["latent_channels"]
    assert model.norm_groups == peer["norm_num_groups"]
    assert vqmodel_bench.BATCH == specs.VQMODEL_BATCH


def test_flop_accounting_agrees_with_kzoo_for_every_workload():
    for name in TIMED:
        kind = specs.FLOP_COUNT[name]
        assert kind == (
            "analytic"
            if name == "matmul_peak"
            else "denoiser_call"
            if name in unet_bench.SAMPLE_BATCH
            else "step"
        ), name
        counted = 1_000_003
        expected = counted * unet_bench.NUM_INFERENCE_STEPS if kind == "denoiser_call" else counted
        if kind != "analytic":
            assert specs.flops_per_step(name, counted) == expected, name
    # matmul_peak: both sides 2*n^3, the one denominator of pct_of_peak.
    kzoo = matmul_bench.build("matmul_peak", False, mm_size=8)
    assert specs.flops_per_step("matmul_peak", None, mm_size=8) == kzoo.flops_per_step == 1024
    assert specs.flops_per_step("matmul_peak", None) == 2 * 2048**3


def _fake_workload(name, batch):
    workload = {
        "step": lambda: None,
        "items_per_step": batch,
        "item": "thing",
        "peer": ("diffusers", "0.42.1"),
        "config": {"batch": batch},
        "counts": {"params": 10, "trainable_params": 10, "buffer_elements": 0},
    }
    if specs.FLOP_COUNT[name] == "denoiser_call":
        workload.update(denoiser=lambda: None, denoiser_calls_per_step=specs.NUM_INFERENCE_STEPS)
    return workload


RUNTIME = {
    "torch_version": "2.13.0+cpu",
    "torch_threads": 2,
    "torch_interop_threads": 2,
    "cpu_capability": "AVX2",
    "mkldnn": True,
}


@pytest.mark.parametrize("precision", specs.PRECISIONS)
def test_a_peer_row_has_a_kzoo_rows_fields_and_compares_with_it(precision):
    timing = _timing.time_steps(lambda: None, 0, 3)
    den_timing = _timing.time_steps(lambda: None, 0, specs.DENOISER_CALLS)
    workload = _fake_workload("unet_sample_b1", batch=1)
    row = harness.assemble_row(
        "unet_sample_b1",
        workload,
        timing,
        specs.flops_per_step("unet_sample_b1", 2000),
        warmup=1,
        steps=3,
        runtime=RUNTIME,
        loadavg_before=_timing.loadavg(),
        precision=precision,
        denoiser_timing=den_timing,
        counted_flops=2000,
        peak_flops=1e9,
    )
    for field in run.REQUIRED_FIELDS:
        assert row[field] is not None, field
    assert row["flops_per_step"] == 100_000 and row["pct_of_peak"] > 0
    assert row["framework"] == "torch" and row["precision"] == precision
    assert compare.side(row) == "peer"
    bf16 = precision == "autocast_bfloat16"
    assert compare.workload_key(row) == "unet_sample_b1" + (" (bf16)" if bf16 else "")

    # The denoiser_call record has the fields of kzoo's.
    kzoo = _timing.Workload(
        step=lambda: None,
        items_per_step=1,
        item="image",
        config={},
        params=0,
        non_trainable_elements=0,
        flops_per_step=100_000,
        flops_method="",
        extra={
            "denoiser_call": lambda: None,
            "denoiser_call_flops": 2000,
            "denoiser_calls_per_step": specs.NUM_INFERENCE_STEPS,
        },
    )
    assert set(row["denoiser_call"]) == set(run._time_denoiser_call(kzoo, 1.0))
    assert row["denoiser_call"]["flops"] == 2000


def test_matmul_peak_rows_stay_float32():
    timing = _timing.time_steps(lambda: None, 0, 1)
    row = harness.assemble_row(
        "matmul_peak",
        _fake_workload("matmul_peak", batch=1),
        timing,
        specs.flops_per_step("matmul_peak", None),
        warmup=3,
        steps=20,
        runtime=RUNTIME,
        loadavg_before=None,
        precision="autocast_bfloat16",
    )
    assert row["precision"] == "float32" and row["flop_count_steps_untimed"] == 0
    assert row["flops_method"] == "analytic 2*n^3" and row["pct_of_peak"] is None


def test_command_line_checks_workloads_and_counts(capsys):
    assert harness.parse_args(["--workload", "all"]).names == list(specs.DEFAULTS)
    args = harness.parse_args(["--workload", "vq_learnable", "--precision", "autocast_bfloat16"])
    assert args.names == ["vq_learnable"] and args.precision == "autocast_bfloat16"
    for argv in (["--workload", "dit_train_memory"], ["--workload", "vq_fwd_bwd", "--steps", "0"]):
        with pytest.raises(SystemExit):
            harness.parse_args(argv)
    assert "dit_train_memory" in capsys.readouterr().err


OUTSIDE = re.compile(r"\.\./|PEERS_PY|peer_extra|peer_autocast")  # ../ : outside the repo


def test_a_sitting_runs_only_files_inside_the_repository():
    with open(os.path.join(REPO, "benchmarks", "sitting.sh")) as f:
        sitting = f.read()
    with open(os.path.join(REPO, "Makefile")) as f:
        makefile = f.read()
    assert not OUTSIDE.findall(sitting) and not OUTSIDE.findall(makefile)
    assert '"$peer_python" -m benchmarks.peers' in sitting
    assert re.search(r"^bench-peers:", makefile, re.M)
    assert "benchmarks/sitting.sh" in makefile.split("bench-peers:", 1)[1]


def test_bench_peers_without_a_torch_python_says_what_it_needs():
    env = {k: v for k, v in os.environ.items() if k not in ("PEER_PYTHON", "MAKEFLAGS")}
    result = subprocess.run(
        ["make", "-s", "bench-peers"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "PEER_PYTHON=" in result.stderr and "torch" in result.stderr

    missing = "/nonexistent/bin/python"
    result = subprocess.run(
        ["bash", "benchmarks/sitting.sh", "/dev/null", missing, "vq_fwd_bwd"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert f"PEER_PYTHON={missing}" in result.stderr and "torch" in result.stderr
