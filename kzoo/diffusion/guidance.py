"""Classifier-free guidance: label dropout for training, a guided denoiser for sampling.

Ho & Salimans 2022, https://arxiv.org/abs/2207.12598: train one denoiser with the
conditioning replaced by a null token with probability `drop_prob` (Algorithm 1),
then sample with `uncond + w * (cond - uncond)` (Eq. 6 written in the form of
diffusers and Stable Diffusion, where `w = 1` is the plain conditional model and
`w = 0` the unconditional one; the paper's `w` is this `w - 1`).
"""

import keras
from keras import ops

from kzoo.diffusion.schedules import broadcast_like


def drop_labels(labels, drop_prob, null_label, seed=None):
    """Replace each example's conditioning by `null_label` with probability `drop_prob`.

    Works for class labels `(B,)` and for any conditioning `(B, ...)` (token ids,
    embeddings): a dropped example has all its entries replaced.

    Args:
        labels: tensor `(B, ...)`.
        drop_prob: probability in `[0, 1]` of dropping an example's conditioning.
        null_label: the null conditioning, a scalar (e.g. the extra class id
            `num_classes`) or a tensor broadcastable to one example `labels[0]`.
        seed: a `keras.random.SeedGenerator` (use one in training so each batch
            differs), an int (the same mask on every call) or None (global).

    Returns:
        A tensor shaped and typed like `labels`.

    Example:
    ```python
    self.seed_generator = keras.random.SeedGenerator(0)  # in __init__
    labels = drop_labels(labels, 0.1, null_label=num_classes, seed=self.seed_generator)
    ```
    """
    if isinstance(drop_prob, bool) or not isinstance(drop_prob, int | float):
        raise ValueError(
            f"`drop_prob` must be a number in [0, 1]. Received: drop_prob={drop_prob!r}"
        )
    if not 0.0 <= drop_prob <= 1.0:
        raise ValueError(f"`drop_prob` must be in [0, 1]. Received: drop_prob={drop_prob}")
    labels = ops.convert_to_tensor(labels)
    rank = len(labels.shape)
    if rank < 1:
        raise ValueError(
            f"`labels` must have a batch axis. Received: labels with shape {labels.shape}"
        )
    mask_shape = (ops.shape(labels)[0],) + (1,) * (rank - 1)
    drop = keras.random.uniform(mask_shape, seed=seed) < drop_prob
    null = ops.broadcast_to(ops.cast(null_label, labels.dtype), ops.shape(labels))
    return ops.where(drop, null, labels)


class GuidedDenoiser:
    """A denoiser wrapper that applies classifier-free guidance in one batched call.

    Calling it runs `denoiser(concat([x, x]), concat([t, t]), concat([cond, null]))`
    once, splits the output and returns `uncond + w * (cond - uncond)` in float32
    (half-precision outputs would amplify rounding by `w`). Conditioning may be a
    tensor or a nest (dict, tuple) of tensors; `null_conditioning` has the same
    structure, each leaf broadcastable to the conditioning leaf (a scalar null label,
    an `(L, D)` null embedding, ...).

    Build it with `guided_denoiser(...)`; `sample(..., guidance_scale=w)` overrides
    the scale (e.g. with an exported endpoint's input).

    Args:
        denoiser: callable `denoiser(x_t, t, conditioning)`.
        guidance_scale: `w` (float, or a scalar or `(B,)` tensor), or None to
            require it at call time.
        null_conditioning: the unconditional input (the label-dropout null token).
    """

    # `sample` passes its `guidance_scale` only to denoisers that declare this.
    accepts_guidance_scale = True

    def __init__(self, denoiser, guidance_scale, null_conditioning):
        if not callable(denoiser):
            raise TypeError(f"`denoiser` must be callable. Received: denoiser={denoiser!r}")
        if null_conditioning is None:
            raise ValueError(
                "`null_conditioning` is required for classifier-free guidance. "
                "Received: null_conditioning=None"
            )
        self.denoiser = denoiser
        self.guidance_scale = guidance_scale
        self.null_conditioning = null_conditioning

    def __call__(self, x, t, conditioning, guidance_scale=None):
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        if scale is None:
            raise ValueError(
                "No guidance scale: pass `guidance_scale` to `guided_denoiser` or to "
                "`sample`. Received: guidance_scale=None"
            )
        if conditioning is None:
            raise ValueError(
                "Classifier-free guidance needs the conditioning to guide towards. "
                "Received: conditioning=None"
            )
        x = ops.convert_to_tensor(x)
        t = ops.convert_to_tensor(t)
        batch = ops.shape(x)[0]

        def with_null(cond, null):
            cond = ops.convert_to_tensor(cond)
            null = ops.broadcast_to(ops.cast(null, cond.dtype), ops.shape(cond))
            return ops.concatenate([cond, null], axis=0)

        both_conditioning = keras.tree.map_structure(
            with_null, conditioning, self.null_conditioning
        )
        output = self.denoiser(
            ops.concatenate([x, x], axis=0), ops.concatenate([t, t], axis=0), both_conditioning
        )
        output = ops.cast(output, "float32")
        cond_output, uncond_output = output[:batch], output[batch:]
        scale = broadcast_like(ops.convert_to_tensor(scale, dtype="float32"), cond_output)
        return uncond_output + scale * (cond_output - uncond_output)


def guided_denoiser(denoiser, guidance_scale, null_conditioning):
    """Wrap `denoiser` for classifier-free guidance (conditional + unconditional in one call).

    Args:
        denoiser: callable `denoiser(x_t, t, conditioning)`.
        guidance_scale: `w`: 1 gives the conditional output, 0 the unconditional
            one, > 1 strengthens the conditioning. None: supply it to `sample`.
        null_conditioning: what the model was trained with for "no conditioning"
            (e.g. `num_classes`, the null label of `drop_labels`).

    Returns:
        A `GuidedDenoiser`, callable as `(x_t, t, conditioning)`, usable by `sample`.

    Example:
    ```python
    guided = guided_denoiser(denoiser, guidance_scale=4.0, null_conditioning=num_classes)
    images = sample(guided, sampler, noise, 20, conditioning=labels)
    ```
    """
    return GuidedDenoiser(denoiser, guidance_scale, null_conditioning)
