import functools
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from benchmarks import _timing, compare, run
from benchmarks import dit as dit_bench
from benchmarks import unet as unet_bench
from benchmarks._diffusion import count_elements
from kzoo.models import DiT, UNet

REQUIRED = (
    "workload",
    "framework",
    "median_s_per_step",
    "min_s_per_step",
    "items_per_s",
    "items_per_s_best",
    "flops_per_step",
    "achieved_flops_per_s",
    "pct_of_peak",
    "params",
    "cpu_util",
    "loadavg_before",
    "jit_compile",
    "versions",
    "config",
)


def test_runner_prints_one_complete_json_line_per_workload(tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    argv = ["--workload", "matmul_peak", "vq_learnable", "--steps", "1", "--warmup", "0"]
    run.main([*argv, "--mm-size", "64", "--jit-compile", "false", "--out", str(out)])
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["workload"] for r in rows] == ["matmul_peak", "vq_learnable"]
    for row in rows:
        missing = [k for k in REQUIRED if k not in row]
        assert not missing, missing
        assert row["framework"] == "kzoo" and row["jit_compile"] is False
        assert row["status"] == "ok"
        assert 0 < row["min_s_per_step"] <= row["median_s_per_step"]
        assert row["items_per_s_best"] >= row["items_per_s"] > 0
        assert row["versions"]["tensorflow"] == tf.__version__
    matmul, vq = rows
    # matmul_peak never runs short: at least 20 timed steps after 3 warm-up steps.
    assert matmul["timed_steps"] == 20 and matmul["warmup_steps"] == 3
    assert matmul["flops_per_step"] == 2 * 64**3
    # Without --peak-flops, the matmul's fastest step is the 100% for what follows.
    assert matmul["pct_of_peak_best"] == pytest.approx(100.0)
    assert vq["peak_flops_per_s_used"] == pytest.approx(matmul["achieved_flops_per_s_best"])
    assert vq["timed_steps"] == 1 and len(vq["times_s"]) == 1
    # One (N, D) x (D, K) distance matmul; nothing differentiates through it.
    assert vq["flops_per_step"] == 2 * (64 * 256) * 512 * 64
    assert vq["params"] == 512 * 64  # the trainable codebook
    assert vq["items_per_step"] == 64
    expected_pct = (
        100 * vq["flops_per_step"] / vq["median_s_per_step"] / matmul["achieved_flops_per_s_best"]
    )
    assert vq["pct_of_peak"] == pytest.approx(expected_pct)
    # --out holds the same lines.
    assert [json.loads(x) for x in out.read_text().splitlines()] == rows


def test_runner_rejects_unknown_workload():
    with pytest.raises(SystemExit):
        run.main(["--workload", "resnet"])


def test_failed_setting_row_keeps_every_required_field():
    row = run._failed_row("vq_fwd_bwd", True, ValueError("Input 1 must be constant.\nmore"))
    assert set(run.REQUIRED_FIELDS) <= set(row)
    assert row["status"] == "failed" and row["median_s_per_step"] is None
    assert row["error"] == "ValueError: Input 1 must be constant."


def test_graph_flops_counts_conv_matmul_and_only_the_gradients_that_run():
    kernel = tf.Variable(tf.random.normal((3, 3, 4, 8)))
    dense = tf.Variable(tf.random.normal((8, 5)))
    images = tf.random.normal((2, 6, 6, 4))

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            hidden = tf.nn.conv2d(x, kernel, strides=2, padding="SAME")  # (2, 3, 3, 8)
            logits = tf.matmul(tf.reshape(hidden, (-1, 8)), dense)  # (18, 5)
            loss = tf.reduce_sum(logits)
        return loss, tape.gradient(loss, [kernel, dense])

    total, by_op = _timing.graph_flops(step.get_concrete_function(images).graph)
    conv = 2 * (2 * 3 * 3) * (3 * 3 * 4 * 8)
    matmul = 2 * 18 * 8 * 5
    # Forward conv + filter gradient; the input gradient is built by TF's Conv2D
    # gradient function but never used (x is no variable), so it is not counted.
    assert by_op["Conv2D"] == conv and by_op["Conv2DBackpropFilter"] == conv
    assert "Conv2DBackpropInput" not in by_op
    # Forward matmul, gradient to `dense` and to `hidden` (needed by the conv filter grad).
    assert by_op["MatMul"] == 3 * matmul
    assert total == 2 * conv + 3 * matmul

    @tf.function
    def gradients_only(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.matmul(tf.reshape(x, (-1, 4)), dense[:4]))
        return tape.gradient(loss, [dense])

    # The loss value is not returned and its gradient needs only shapes: TF never
    # runs the forward matmul, so only the gradient matmul counts.
    total, _ = _timing.graph_flops(gradients_only.get_concrete_function(images).graph)
    assert total == 2 * 72 * 4 * 5


def test_time_steps_statistics():
    calls = []
    timing = _timing.time_steps(lambda: calls.append(1), warmup=2, steps=5)
    assert len(calls) == 7 and len(timing["times_s"]) == 5
    assert timing["min_s_per_step"] <= timing["median_s_per_step"]
    assert timing["median_s_per_step"] == pytest.approx(np.median(timing["times_s"]), abs=1e-6)
    with pytest.raises(ValueError, match="steps=0"):
        _timing.time_steps(lambda: None, warmup=0, steps=0)


def _row(workload, framework, median_s, min_s, jit=None, items=64, flops=None):
    row = {
        "workload": workload,
        "median_s_per_step": median_s,
        "min_s_per_step": min_s,
        "items_per_step": items,
        "items_per_s": items / median_s,
        "flops_per_step": flops,
        "loadavg_before": "0.10 0.20 0.30 1/100 1",
        "cpu_util": 1.9,
        "others_cpu_per_s": 0.01,
    }
    if framework == "kzoo":
        row.update(framework="kzoo", jit_compile=jit, status="ok")
    else:
        row["torch_version"] = "2.13.0+cpu"
    return row


def test_compare_table_ratio_of_medians_and_faster_jit():
    rows = [
        _row("matmul_peak", "kzoo", 0.04, 0.02, jit=False, items=1, flops=4e9),  # peak 200 GFLOP/s
        _row("vq_learnable", "kzoo", 0.010, 0.009, jit=False, flops=1e9),
        _row("vq_learnable", "peer", 0.100, 0.090),
        _row("vq_learnable", "kzoo", 0.030, 0.008, jit=False, flops=1e9),
        _row("vq_learnable", "peer", 0.300, 0.080),
        _row("vq_learnable", "kzoo", 0.050, 0.050, jit=True, flops=1e9),
        {
            "workload": "vq_learnable",
            "framework": "kzoo",
            "jit_compile": True,
            "status": "failed",
            "error": "InvalidArgumentError: not constant",
            "median_s_per_step": None,
        },
    ]
    table = compare.tables(rows)
    line = next(x for x in table.splitlines() if x.startswith("| vq_learnable | 3,200"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    # kzoo: median of run medians 0.02 s -> 3,200 maps/s; peer 0.2 s -> 320; ratio 10x.
    assert cells[1].startswith("3,200") and cells[2].startswith("320 ")
    assert cells[3] == "**10.00x**"
    assert cells[4] == "8,000" and cells[5] == "800"  # fastest single steps: 0.008 and 0.08 s
    assert cells[6].startswith("25.0%")  # 1e9 / 0.02 s = 50 GFLOP/s of 200
    assert cells[8] == "False"
    assert "100% of peak = 200 GFLOP/s" in table
    jit_line = next(x for x in table.splitlines() if x.startswith("| vq_learnable | 3,200 | 1,280"))
    assert jit_line.endswith("| False |")


# Tiny models for the smoke tests of the diffusion workloads (the benchmark's are
# 9M and 33M parameters; their counts are checked without tracing a step).
TINY_UNET = dict(
    image_shape=(8, 8, 3),
    channels=(8, 16),
    num_res_blocks=1,
    attention_resolutions=(4,),
    norm_groups=4,
    time_embedding_dim=16,
)
TINY_DIT = dict(
    input_shape=(8, 8, 4), patch_size=2, hidden_size=32, depth=2, num_heads=4, num_classes=5
)


def _run_tiny(monkeypatch, capsys, module, names, extra_argv=(), **overrides):
    monkeypatch.setattr(module, "build", functools.partial(module.build, **overrides))
    argv = ["--workload", *names, "--steps", "1", "--warmup", "0", "--jit-compile", "false"]
    run.main([*argv, "--peak-flops", "1e11", *extra_argv])
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["workload"] for r in rows] == names
    for row in rows:
        missing = [k for k in REQUIRED if k not in row]
        assert not missing, missing
        assert row["status"] == "ok" and row["timed_steps"] == 1
        assert row["items_per_s_best"] >= row["items_per_s"] > 0
        assert row["flops_per_step"] > 0 and row["pct_of_peak"] > 0
        assert "unknown_shape_ops" not in row["flops_by_op"]
    return rows


def test_benchmark_models_have_the_documented_parameter_counts():
    # Built, never traced: the counts of the rows' configs at full size.
    assert unet_bench.make_unet().count_params() == unet_bench.PEER_PARAMS == 8_952_067
    dit = dit_bench.make_dit()
    assert dit.count_params() == dit_bench.PARAMS == 32_957_200
    # The row's `params` is the trainable count (torch's parameters()); the fixed
    # sin-cos positions are the non-trainable elements, a buffer in the peer.
    assert count_elements(dit.trainable_variables) == 32_858_896
    assert count_elements(dit.non_trainable_variables) == 256 * 384


def test_unet_train_on_a_tiny_unet(monkeypatch, capsys):
    (row,) = _run_tiny(
        monkeypatch, capsys, unet_bench, ["unet_train"], batch=2, model_kwargs=TINY_UNET
    )
    unet = UNet(**TINY_UNET)
    assert row["items_per_step"] == 2 and row["params"] == unet.count_params()
    assert row["config"]["kwargs"]["channels"] == [8, 16] and row["config"]["batch"] == 2
    forward = tf.function(lambda x, t: unet([x, t]))
    x, t = tf.zeros((2, 8, 8, 3)), tf.zeros((2,))
    forward_flops, _ = _timing.graph_flops(forward.get_concrete_function(x, t).graph)
    # A train step is forward + both gradients of every conv and matmul (3x the
    # forward), less the input gradients nothing needs: conv_in's (the images)
    # and the first time-MLP layer's (the sinusoidal features of t).
    conv_in = 2 * (2 * 8 * 8) * (3 * 3 * 3 * 8)
    time_dense1 = 2 * 2 * 8 * 16
    assert row["flops_per_step"] == 3 * forward_flops - conv_in - time_dense1
    assert {"Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter"} <= set(row["flops_by_op"])


def test_precision_flag_builds_the_model_under_that_policy_and_restores_it(monkeypatch, capsys):
    policies = []
    build = unet_bench.build

    def spy(*args, **kwargs):
        policies.append(keras.config.dtype_policy().name)
        return build(*args, **kwargs)

    monkeypatch.setattr(unet_bench, "build", spy)
    (row,) = _run_tiny(
        monkeypatch,
        capsys,
        unet_bench,
        ["unet_train"],
        extra_argv=["--precision", "mixed_bfloat16"],
        batch=2,
        model_kwargs=TINY_UNET,
    )
    assert policies == ["mixed_bfloat16"] and row["precision"] == "mixed_bfloat16"
    assert keras.config.dtype_policy().name == "float32"  # restored for what follows
    with pytest.raises(SystemExit):
        run.main(["--workload", "unet_train", "--precision", "mixed_float16"])


def test_compare_keeps_bfloat16_rows_apart_from_float32_rows():
    rows = [
        _row("unet_train", "kzoo", 2.0, 1.9, jit=False, items=32),
        _row("unet_train", "peer", 1.6, 1.5, items=32),
        {
            **_row("unet_train", "kzoo", 1.0, 0.9, jit=False, items=32),
            "precision": "mixed_bfloat16",
        },
        {**_row("unet_train", "peer", 0.8, 0.7, items=32), "precision": "autocast_bfloat16"},
    ]
    lines = compare.tables(rows).splitlines()
    fp32 = next(x for x in lines if x.startswith("| unet_train |"))
    bf16 = next(x for x in lines if x.startswith("| unet_train (bf16) |"))
    assert "**0.80x**" in fp32 and "**0.80x**" in bf16
    assert bf16.split("|")[2].strip().startswith("32.0")  # 32 images / 1.0 s


def test_unet_sample_on_a_tiny_unet(monkeypatch, capsys):
    (row,) = _run_tiny(
        monkeypatch, capsys, unet_bench, ["unet_sample"], batch=2, model_kwargs=TINY_UNET
    )
    assert row["items_per_step"] == 2 and row["params"] == UNet(**TINY_UNET).count_params()
    # One sample = 50 denoiser calls; the loop's FLOPs are 50 counted calls.
    call = row["denoiser_call"]
    assert row["flops_per_step"] == 50 * call["flops"] > 0
    assert row["config"]["num_inference_steps"] == 50 and len(call["times_s"]) == 10
    assert row["config"]["sampler_config"]["timestep_spacing"] == "leading"


def test_unet_sample_b1_samples_one_image(monkeypatch, capsys):
    # No batch override: the workload's own default must be one image.
    (row,) = _run_tiny(monkeypatch, capsys, unet_bench, ["unet_sample_b1"], model_kwargs=TINY_UNET)
    assert row["items_per_step"] == row["config"]["batch"] == 1
    assert row["config"]["input_shape"] == [1, 8, 8, 3]
    assert row["denoiser_call"]["batch"] == 1
    assert row["flops_per_step"] == 50 * row["denoiser_call"]["flops"] > 0


def test_dit_train_on_a_tiny_dit(monkeypatch, capsys):
    (row,) = _run_tiny(
        monkeypatch, capsys, dit_bench, ["dit_train"], batch=2, model_kwargs=TINY_DIT
    )
    dit = DiT(**TINY_DIT)
    assert row["params"] == count_elements(dit.trainable_variables)
    assert row["non_trainable_elements"] == 16 * 32  # the fixed positions
    assert row["config"]["peer_params"] == 39_798_928
    assert "39,798,928" in row["notes"]
    # Attention (BatchMatMul) and the token projections (MatMul) are counted.
    assert row["flops_by_op"]["BatchMatMulV2"] > 0 and row["flops_by_op"]["MatMul"] > 0


def test_dit_train_memory_row_has_both_settings(monkeypatch, capsys):
    measure = functools.partial(dit_bench.measure_memory, model_kwargs=TINY_DIT, effective_batch=8)
    monkeypatch.setattr(dit_bench, "measure_memory", measure)
    # 512 MB the tiny children never need: their peaks must not include it (ru_maxrss
    # would: Linux carries the parent's high-water mark across fork + exec).
    ballast = np.ones(64 * 2**20)
    run.main(["--workload", "dit_train_memory", "--steps", "1", "--jit-compile", "false"])
    parent_rss = dit_bench._rss_bytes()
    del ballast
    (row,) = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert set(REQUIRED) <= set(row)
    assert row["status"] == "ok" and row["kind"] == "peak_memory"
    assert row["median_s_per_step"] is None and row["effective_batch"] == 8
    assert row["params"] == count_elements(DiT(**TINY_DIT).trainable_variables)
    settings = row["settings"]
    assert list(settings) == ["batch8", "accum4x2"]
    for name, calls in (("batch8", 1), ("accum4x2", 4)):
        setting = settings[name]
        assert setting["train_step_calls"] == calls and setting["effective_batch"] == 8
        # Four accumulated micro-batches make ONE optimizer update.
        assert setting["optimizer_iterations"] == 1
        assert np.isfinite(setting["loss"])
        for key in ("peak_rss_bytes", "rss_after_build_bytes", "peak_minus_build_bytes"):
            assert setting[key] > 0, (name, key)
        assert setting["rss_after_build_bytes"] <= setting["peak_rss_bytes"] < parent_rss
    assert row["accum_over_batch_peak_rss"] > 0
    # compare.py keeps the row out of the speed tables and prints it on its own.
    table = compare.tables([row])
    assert "failed" not in table and "| dit_train_memory | False | accum4x2 | CPU |" in table


def test_profile_splits_the_op_time_by_part_and_op(tmp_path, capsys):
    from benchmarks import profile

    argv = ["--workload", "vq_fwd_bwd_ste", "--steps", "1", "--warmup", "1"]
    assert profile.main([*argv, "--logdir", str(tmp_path)]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["workload"] == "vq_fwd_bwd_ste" and row["op_seconds"] > 0
    parts = row["share_by_part_pct"]
    # The step is the VQ layer alone: its forward (distance matmul, top_k, EMA) dominates.
    assert parts["vq (forward)"] > 50 and abs(sum(parts.values()) - 100) < 1
    assert "_MklMatMul" in row["share_by_op_pct"] or "MatMul" in row["share_by_op_pct"]
    assert list(tmp_path.glob("**/*.xplane.pb"))


def test_profile_names_ops_by_part():
    from benchmarks.profile import _part

    assert _part("gradient_tape/unet_1/down0_res0_1/norm1_1/Sum", "Sum") == "groupnorm (backward)"
    assert _part("vqvae_1/encoder_1/mid_attn_1/MatMul", "_MklMatMul") == "attention (forward)"
    assert _part("vq/TopKV2", "TopKV2") == "vq (forward)"
    assert _part("vqvae_1/decoder_1/conv_out_1/BiasAdd", "_MklNativeFusedConv2D") == (
        "conv (forward)"
    )
    assert _part("adam_w/Sqrt_3", "Sqrt") == "optimizer (forward)"
