"""One training step of every kzoo model family under each dtype policy (issue: scale and trust).

Checks: a finite loss; quantizers, softmax and normalisation statistics in float32
(the quantizer's compute dtype; the float32 output layers); loss scaling active
under mixed_float16 (Keras wraps the optimizer in a LossScaleOptimizer); the
model still accepts float32 inputs, as exported signatures do; and the mixed
step is the float32 step: same loss and same SGD update within the tolerances
of `MIXED_TOLERANCES`.
"""

import functools

import keras
import numpy as np
import pytest

from kzoo.testing import dtype_policy

pytestmark = pytest.mark.slow

POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
# Tracing a train step costs 10-40 s even for these tiny models; one eager step
# checks the same dtypes. The float16 step (loss scaling) runs as a traced graph.
GRAPH_POLICIES = ("mixed_float16",)


def _sgd():
    # SGD, not Adam: its update is the gradient itself, so comparing updates
    # compares gradients (Adam's first step is about lr * sign(gradient)).
    return keras.optimizers.SGD(0.1)


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
    model.compile(optimizer=_sgd(), jit_compile=False, run_eagerly=run_eagerly)
    x = np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 3)).astype("float32")
    return model, (x,), [model.quantizer], x


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
    model.compile(optimizer=_sgd(), loss="mse", jit_compile=False, run_eagerly=run_eagerly)
    rng = np.random.default_rng(0)
    x = [
        rng.normal(size=(4, 8, 8, 3)).astype("float32"),
        np.array([1, 10, 100, 999], "int32"),
        np.array([0, 1, 2, 3], "int32"),
    ]
    return model, (x, rng.normal(size=(4, 8, 8, 3)).astype("float32")), [], x


def _dit(run_eagerly):
    from kzoo.models import DiT

    model = DiT(
        input_shape=(8, 8, 4), patch_size=2, hidden_size=16, depth=1, num_heads=2, num_classes=3
    )
    model.compile(optimizer=_sgd(), loss="mse", jit_compile=False, run_eagerly=run_eagerly)
    rng = np.random.default_rng(0)
    x = [
        rng.normal(size=(4, 8, 8, 4)).astype("float32"),
        np.array([1, 10, 100, 999], "int32"),
        np.array([0, 1, 2, 3], "int32"),
    ]
    return model, (x, rng.normal(size=(4, 8, 8, 4)).astype("float32")), [], x


def _code_prior(run_eagerly):
    from kzoo.models import CodePrior

    model = CodePrior(
        codebook_size=8, grid_shape=(2, 3), hidden_dim=16, num_layers=1, num_heads=2, num_classes=3
    )
    model.compile(optimizer=_sgd(), jit_compile=False, run_eagerly=run_eagerly)
    rng = np.random.default_rng(0)
    tokens, targets = model.prepare_inputs(
        rng.integers(0, 8, (4, 2, 3)).astype("int32"), np.array([0, 1, 2, 0], "int32")
    )
    return model, (np.asarray(tokens), np.asarray(targets)), [], np.asarray(tokens)


def _diffusion(run_eagerly):
    from kzoo.diffusion import DiffusionModel
    from kzoo.models import DiT

    # Its own train_step: noise and timesteps drawn by a seeded SeedGenerator (the
    # same under every policy) and the loss scaled by the model itself.
    denoiser = DiT(
        input_shape=(8, 8, 4), patch_size=2, hidden_size=16, depth=1, num_heads=2, num_classes=3
    )
    model = DiffusionModel(
        denoiser,
        schedule={"name": "linear", "num_train_timesteps": 100},
        max_generate_steps=8,
        seed=0,
    )
    model.compile(optimizer=_sgd(), jit_compile=False, run_eagerly=run_eagerly)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (4, 8, 8, 4)).astype("float32")
    labels = np.array([0, 1, 2, 0], "int32")
    return model, (images, labels), [], [images, np.array([1, 10, 50, 99], "int32"), labels]


CAPTIONS = np.array(
    [
        "a small red circle at the top left on a blue background",
        "a large cyan ring at the center on a gray background",
        "a medium white square at the bottom right on a black background",
        "a small green cross at the center left on a white background",
    ]
)


def _images(shape=(16, 16, 3)):
    return np.random.default_rng(0).uniform(-1, 1, (4, *shape)).astype("float32")


def _dual_encoder(run_eagerly):
    from kzoo.models import DualEncoder

    model = DualEncoder(
        text_encoder={"hidden_dim": 16, "num_layers": 1, "num_heads": 2},
        image_encoder={
            "image_shape": (16, 16, 3),
            "kind": "vit",
            "patch_size": 4,
            "hidden_dim": 16,
            "num_layers": 1,
            "num_heads": 2,
        },
        tokenizer={"vocabulary": "kzoo_shapes", "sequence_length": 16},
        embedding_dim=8,
    )
    model.compile(optimizer=_sgd(), jit_compile=False, run_eagerly=run_eagerly)
    return model, (_images(), CAPTIONS), [], (_images(), CAPTIONS)


def _captioner(run_eagerly):
    from kzoo.models import Captioner

    model = Captioner(
        image_encoder={
            "image_shape": (16, 16, 3),
            "kind": "conv",
            "channels": (8, 8),
            "norm_groups": 4,
            "hidden_dim": 16,
        },
        vocabulary="kzoo_shapes",
        max_length=14,
        hidden_dim=16,
        num_layers=1,
        num_heads=2,
    )
    model.compile(optimizer=_sgd(), jit_compile=False, run_eagerly=run_eagerly)
    return model, (_images(), CAPTIONS), [], (_images(), CAPTIONS)


BUILDERS = {
    "vqvae": _vqvae,
    "unet": _unet,
    "dit": _dit,
    "diffusion": _diffusion,
    "code_prior": _code_prior,
    "dual_encoder": _dual_encoder,
    "captioner": _captioner,
}
# (loss rtol, update rtol) of a mixed step against the float32 step. An update's
# error is |mixed - float32| / |float32| over all trainable weights together.
# float16 keeps 11 significant bits (5e-4 relative per rounding), bfloat16 8
# (4e-3); these one-layer models round activations and gradients a few dozen
# times. Measured worst case over the families: float16 3.6e-4 (loss, the dual
# encoder) and 5.5e-3 (update, the captioner), bfloat16 4.0e-3 and 2.8e-2 (the
# VQ-VAE); the limits leave ~10x for other CPUs' kernels. Gradients left scaled
# by the loss scale (2**15) are off by 1.0, an overflow gives inf.
MAX_SKIPPED_STEPS = 6
MIXED_TOLERANCES = {"mixed_float16": (5e-3, 5e-2), "mixed_bfloat16": (5e-2, 2e-1)}


@functools.cache
def _step(name, policy):
    """One SGD step of `BUILDERS[name]` under `policy`, from weights seeded alike.

    Returns:
        `(model, logs, outputs, quantizers, initial, update)`: the logs of the
        step, the model's outputs on float32 inputs afterwards, its quantizers,
        and the trainable weights before and their change (float32 NumPy arrays).
    """
    keras.utils.set_random_seed(0)
    with dtype_policy(policy):
        model, data, quantizers, inputs = BUILDERS[name](run_eagerly=policy not in GRAPH_POLICIES)
        initial = [np.array(w, dtype="float32") for w in model.trainable_weights]
        # Dynamic loss scaling (mixed_float16) skips a step whose scaled gradients
        # overflow float16 and halves the scale: from Keras' 2**15, the first step
        # of the code prior is skipped, and four of the dual encoder (its logits
        # are scaled by 1 / 0.07). Weights stay put, so
        # the first step applied is the one to compare with float32's.
        for _ in range(MAX_SKIPPED_STEPS + 1):
            # `fit`, not `train_on_batch`: the caption models take `(images,
            # captions)` pairs, and train_on_batch passes `(x, y, sample_weight)`.
            history = model.fit(*data, batch_size=4, shuffle=False, verbose=0).history
            if int(model.optimizer.iterations) > 0:
                break
        logs = {key: values[-1] for key, values in history.items()}
        outputs = model(inputs, training=False)  # float32 inputs, as exports get
    update = [
        np.array(w, dtype="float32") - w0
        for w, w0 in zip(model.trainable_weights, initial, strict=True)
    ]
    return model, logs, outputs, quantizers, initial, update


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_one_training_step_under_each_policy(name, policy):
    model, logs, outputs, quantizers, _, _ = _step(name, policy)
    assert all(np.isfinite(float(v)) for v in logs.values()), logs
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (
        policy == "mixed_float16"
    )
    for quantizer in quantizers:
        assert quantizer.compute_dtype == "float32" and quantizer.variable_dtype == "float32"
    # Every model ends in a float32 layer: exported signatures return float32.
    for output in keras.tree.flatten(outputs):
        output = np.asarray(output)
        if output.dtype.kind == "f":
            assert output.dtype == np.float32 and np.isfinite(output).all(), name
    compute_dtypes = {layer.compute_dtype for layer in model._flatten_layers()}
    assert (policy.split("_")[-1] in compute_dtypes) or policy == "float32"


@pytest.mark.parametrize("policy", sorted(MIXED_TOLERANCES))
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_mixed_step_matches_the_float32_step(name, policy):
    _, logs, _, _, initial, update = _step(name, policy)
    _, expected_logs, _, _, expected_initial, expected_update = _step(name, "float32")
    for w, w0 in zip(initial, expected_initial, strict=True):
        np.testing.assert_array_equal(w, w0)  # the same start, so the comparison is fair
    loss_rtol, update_rtol = MIXED_TOLERANCES[policy]
    loss, expected_loss = float(logs["loss"]), float(expected_logs["loss"])
    loss_error = abs(loss - expected_loss) / abs(expected_loss)
    flat = np.concatenate([u.ravel() for u in update])
    expected_flat = np.concatenate([u.ravel() for u in expected_update])
    update_error = np.linalg.norm(flat - expected_flat) / np.linalg.norm(expected_flat)
    assert np.linalg.norm(expected_flat) > 0, "the float32 step changed nothing"
    assert loss_error < loss_rtol, (loss, expected_loss)
    assert update_error < update_rtol, update_error
