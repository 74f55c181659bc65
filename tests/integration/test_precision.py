"""One training step of every kzoo model under each dtype policy (issue: scale and trust).

Checks: a finite loss; quantizers, softmax and normalisation statistics in float32
(the quantizer's compute dtype; the float32 output layers); loss scaling active
under mixed_float16 (Keras wraps the optimizer in a LossScaleOptimizer); and the
model still accepts float32 inputs, as exported signatures do.
"""

import keras
import numpy as np
import pytest

from kzoo.testing import dtype_policy

pytestmark = pytest.mark.slow

POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
# Tracing a train step costs 10-40 s even for these tiny models; one eager step
# checks the same dtypes. The float16 step (loss scaling) runs as a traced graph.
GRAPH_POLICIES = ("mixed_float16",)


def _vqvae(run_eagerly):
    from kzoo.models import VQVAE

    model = VQVAE(
        image_shape=(16, 16, 3),
        codebook_size=16,
        embedding_dim=8,
        channels=(8, 16),
        norm_groups=4,
        decay=0.9,
    )
    model.compile(optimizer="adam", jit_compile=False, run_eagerly=run_eagerly)
    x = np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 3)).astype("float32")
    return model, (x,), [model.quantizer]


def _unet(run_eagerly):
    from kzoo.models import UNet

    model = UNet(
        image_shape=(8, 8, 3),
        channels=(8, 16),
        num_res_blocks=1,
        attention_resolutions=(4,),
        norm_groups=4,
        time_embedding_dim=16,
        num_classes=3,
    )
    model.compile(optimizer="adam", loss="mse", jit_compile=False, run_eagerly=run_eagerly)
    rng = np.random.default_rng(0)
    x = [
        rng.normal(size=(4, 8, 8, 3)).astype("float32"),
        np.array([1, 10, 100, 999], "int32"),
        np.array([0, 1, 2, 3], "int32"),
    ]
    return model, (x, rng.normal(size=(4, 8, 8, 3)).astype("float32")), []


def _dit(run_eagerly):
    from kzoo.models import DiT

    model = DiT(
        input_shape=(8, 8, 4), patch_size=2, hidden_size=16, depth=1, num_heads=2, num_classes=3
    )
    model.compile(optimizer="adam", loss="mse", jit_compile=False, run_eagerly=run_eagerly)
    rng = np.random.default_rng(0)
    x = [
        rng.normal(size=(4, 8, 8, 4)).astype("float32"),
        np.array([1, 10, 100, 999], "int32"),
        np.array([0, 1, 2, 3], "int32"),
    ]
    return model, (x, rng.normal(size=(4, 8, 8, 4)).astype("float32")), []


BUILDERS = {"vqvae": _vqvae, "unet": _unet, "dit": _dit}


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_one_training_step_under_each_policy(name, policy):
    with dtype_policy(policy):
        model, data, quantizers = BUILDERS[name](run_eagerly=policy not in GRAPH_POLICIES)
        logs = model.train_on_batch(*data, return_dict=True)
        float32_inputs = data[0]
        outputs = model.predict_on_batch(float32_inputs)
    assert all(np.isfinite(float(v)) for v in logs.values()), logs
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (
        policy == "mixed_float16"
    )
    for quantizer in quantizers:
        assert quantizer.compute_dtype == "float32" and quantizer.variable_dtype == "float32"
    # Every model ends in a float32 layer: exported signatures return float32.
    assert np.asarray(outputs).dtype == np.float32 and np.isfinite(outputs).all()
    compute_dtypes = {layer.compute_dtype for layer in model._flatten_layers()}
    assert (policy.split("_")[-1] in compute_dtypes) or policy == "float32"
