"""Every quantizer exports (encode/decode endpoints) to LiteRT and SavedModel with parity.

LiteRT runs in process, so it is checked in the default suite (one module-scoped
export per quantizer kind, ~2 s each). The SavedModel parity check starts a fresh
Python process per export (~5-10 s each here), so that test is marked slow.
"""

import keras
import numpy as np
import pytest
from keras import ops

from kzoo.export import export_all, format_parity_table, litert_signatures, run_litert
from kzoo.layers import FSQ, LFQ, GroupedVQ, ResidualVQ, VectorQuantizer

DIM = 8
GRID = (4, 4)

# kind -> (quantizer factory, trailing shape of the indices, number of codes per index)
KINDS = {
    "vq": (
        lambda: VectorQuantizer(
            16, DIM, use_cosine=True, code_dim=4, gradient_estimator="rotation"
        ),
        (),
        16,
    ),
    "rvq": (lambda: ResidualVQ(3, 16, DIM, gradient_estimator="rotation"), (3,), 16),
    "grouped": (lambda: GroupedVQ(2, 16, DIM), (2,), 16),
    "fsq": (lambda: FSQ([5, 4, 3], embedding_dim=DIM), (), 60),
    "lfq": (lambda: LFQ(5, embedding_dim=DIM), (), 32),
}


class QuantizerModel(keras.Model):
    """A quantizer behind kzoo's export contract: vectors -> indices -> vectors.

    `quantize` is the layer's own forward pass (`training=False`), which a model's
    serving signature runs (the rotation trick's custom gradient must export too).
    """

    def __init__(self, quantizer, index_shape, codebook_size, **kwargs):
        super().__init__(**kwargs)
        self.quantizer = quantizer
        self.index_shape = (*GRID, *index_shape)
        # Parity draws decode inputs in [0, codebook_size).
        self.codebook_size = codebook_size
        self.quantizer.build((None, *GRID, DIM))
        self.built = True

    def call(self, vectors, training=None):
        return self.quantizer(vectors, training=training)

    def export_endpoints(self):
        vector_spec = keras.InputSpec(shape=(None, *GRID, DIM), dtype="float32", name="vectors")
        index_spec = keras.InputSpec(shape=(None, *self.index_shape), dtype="int32", name="indices")
        return {
            "encode": (
                lambda vectors: {"indices": self.quantizer.get_code_indices(vectors)},
                [vector_spec],
            ),
            "decode": (lambda indices: {"vectors": self.quantizer.lookup(indices)}, [index_spec]),
            "quantize": (
                lambda vectors: {"quantized": self.quantizer(vectors, training=False)},
                [vector_spec],
            ),
        }


def _model(kind):
    factory, index_shape, codebook_size = KINDS[kind]
    keras.utils.set_random_seed(0)
    return QuantizerModel(factory(), index_shape, codebook_size, name=f"{kind}_quantizer")


@pytest.fixture(scope="module", params=list(KINDS))
def litert_export(request, tmp_path_factory):
    model = _model(request.param)
    results = export_all(
        model,
        tmp_path_factory.mktemp(request.param),
        name=request.param,
        formats=("litert",),
        quantize=("none",),
        check_parity=True,
    )
    return model, results["litert"]


def test_litert_export_matches_keras(litert_export):
    model, result = litert_export
    assert result.parity["ok"], format_parity_table(result.parity)
    path = result.files["float32"]
    signatures = litert_signatures(path)
    assert {"encode", "decode", "quantize"} <= set(signatures)
    assert signatures["encode"]["outputs"]["indices"]["dtype"] == "int32"
    # Encode then decode through the file reproduces the quantizer's forward pass.
    x = np.random.default_rng(1).normal(size=(3, *GRID, DIM)).astype("float32")
    indices = run_litert(path, "encode", {"vectors": x})["indices"]
    assert indices.shape == (3, *model.index_shape)
    np.testing.assert_array_equal(
        indices, ops.convert_to_numpy(model.quantizer.get_code_indices(x))
    )
    vectors = run_litert(path, "decode", {"indices": indices})["vectors"]
    quantized = run_litert(path, "quantize", {"vectors": x})["quantized"]
    expected = ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(vectors, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(quantized, expected, atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_saved_model_export_matches_keras(kind, tmp_path):
    result = export_all(
        _model(kind),
        tmp_path,
        name=kind,
        formats=("saved_model",),
        quantize=("none",),
        check_parity=True,
    )["saved_model"]
    assert result.parity["ok"], format_parity_table(result.parity)
    assert result.signatures == ["serving_default", "encode", "decode", "quantize"]
