"""Tie-aware export parity: a near-tied code flip passes, a wrong choice fails.

The model here quantizes vectors with a hand-set codebook, so the parity batch can
put a vector a hair off the bisector of two codes (a near tie) and others far from
every bisector. An "export" is a LiteRT file of a copy of the model with one
deliberate change; its parity is checked against the unchanged model's reference.
"""

import keras
import numpy as np
import pytest
from keras import layers, ops

from kzoo.export import check_parity, export_all, format_parity_table, reference_outputs
from kzoo.export import parity as export_parity
from kzoo.layers import VectorQuantizer
from kzoo.models import VQVAE

DIM = 4
GRID = (2, 2)
# Codes 0 and 1 are mirror images, so vectors with first component 0 lie on their bisector.
CODEBOOK = np.array(
    [[1.0, 0.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]],
    "float32",
)
# Position (0, 0, 0) is 1e-6 nearer code 0 than code 1 (gap 4e-6 in squared distance);
# every other vector is nearest one code by a gap of at least 1.
VECTORS = np.array(
    [
        [
            [[1e-6, 0.3, 0.0, 0.0], [0.9, 0.1, 0.0, 0.0]],
            [[0.0, 1.8, 0.1, 0.0], [0.0, 0.1, 1.9, 0.0]],
        ],
        [
            [[-0.9, 0.0, 0.1, 0.0], [0.1, 1.9, 0.0, 0.0]],
            [[0.8, 0.0, 0.0, 0.1], [0.0, 0.0, 1.7, 0.2]],
        ],
    ],
    "float32",
)
# Rows 2 and 3 differ, so decoding tells codes 2 and 3 apart; codes 0 and 1 decode to
# (0.5, 0.5, 0.5) and its negative.
DECODER_KERNEL = np.array(
    [[0.5, 0.5, 0.5], [0.1, 0.2, 0.3], [0.3, 0.1, 0.2], [0.2, 0.3, 0.1]], "float32"
)
PARITY_BATCH = {
    "serving_default": {"vectors": VECTORS},
    "encode": {"vectors": VECTORS},
    "decode": {"indices": np.array([[[0, 1], [2, 3]], [[3, 2], [1, 0]]], "int32")},
}


class TieVQ(keras.Model):
    """vectors -> encoder (Dense) -> nearest code -> decoder (Dense), VQVAE's endpoints."""

    codebook_size = len(CODEBOOK)

    def __init__(self, codebook=CODEBOOK, encoder_bias=None, **kwargs):
        super().__init__(**kwargs)
        self.encoder = layers.Dense(DIM, kernel_initializer="identity")
        self.quantizer = VectorQuantizer(len(codebook), DIM)
        self.decoder = layers.Dense(3)
        self.encoder.build((None, DIM))
        self.quantizer.build((None, DIM))
        self.decoder.build((None, DIM))
        self.quantizer.codebook.assign(codebook)
        self.decoder.kernel.assign(DECODER_KERNEL)
        if encoder_bias is not None:
            self.encoder.bias.assign(encoder_bias)
        self.built = True

    def encode(self, vectors):
        return self.quantizer.get_code_indices(self.encoder(vectors))

    def decode(self, indices):
        return self.decoder(self.quantizer.lookup(indices))

    def call(self, vectors, training=None):
        return self.decoder(self.quantizer(self.encoder(vectors), training=training))

    def export_endpoints(self):
        vectors = keras.InputSpec(shape=(None, *GRID, DIM), dtype="float32", name="vectors")
        indices = keras.InputSpec(shape=(None, *GRID), dtype="int32", name="indices")
        return {
            "serving_default": (lambda v: {"reconstruction": self(v, training=False)}, [vectors]),
            "encode": (lambda v: {"indices": self.encode(v)}, [vectors]),
            "decode": (lambda i: {"images": self.decode(i)}, [indices]),
        }

    def export_parity_choices(self):
        return {
            "encode": {
                "indices": {"search": lambda v: self.quantizer.search_vectors(self.encoder(v))}
            },
            "serving_default": {
                "reconstruction": {"codes": ("encode", "indices"), "decode": ("decode", "images")}
            },
        }


def _litert_parity(reference, exported_model, tmp_path, formats=("litert",)):
    """Parity of `exported_model`'s export against another model's `reference`."""
    results = export_all(
        exported_model, tmp_path, name="tie_vq", formats=formats, check_parity=False
    )
    if "saved_model" in formats:
        return check_parity(reference, saved_model_dir=results["saved_model"].path)
    return check_parity(reference, litert_files={"float32": results["litert"].files["float32"]})


@pytest.fixture(scope="module")
def reference():
    return reference_outputs(TieVQ(), PARITY_BATCH)


def _flipping_model():
    """An honest export whose float computations moved code 0 by 3e-6 (well within the
    1e-4 float tolerance): the vector at (0, 0, 0), 1e-6 nearer code 0, now picks code 1."""
    codebook = CODEBOOK.copy()
    codebook[0, 0] += 3e-6
    return TieVQ(codebook)


def test_near_ties_closed_form():
    # Codes (1, 0) and (-1, 0), vector (t, 0): Keras's code 0 is nearer by the gap 4 t. An
    # export whose vectors and codes moved by eps per component can shift that gap by
    # 2 eps |c0 - c1|_1 + 2 eps (|x - c0|_1 + |x - c1|_1) + 4 D eps^2 = 8 eps + 8 eps^2,
    # and float32 rounding by gamma_8 ((1 + t + 2 eps)^2 + 4 eps^2) ~ 4.8e-7 per code:
    # a tie up to t = 2 eps + 2 eps^2 + 2.4e-7.
    codebook = np.array([[1.0, 0.0], [-1.0, 0.0]])
    eps = 1e-3
    t = np.array([1.0 * eps, 1.99 * eps, 2.05 * eps, 0.5])
    vectors = np.stack([t, np.zeros_like(t)], axis=-1)
    reference = np.zeros(4, "int32")
    ties = export_parity._near_ties(vectors, codebook, reference, np.ones(4, "int32"), eps)
    np.testing.assert_array_equal(ties, [True, True, False, False])
    # Equal codes are agreement, not ties; an index outside the codebook is never a tie.
    same = export_parity._near_ties(vectors, codebook, reference, reference, eps)
    assert not same.any()
    outside = export_parity._near_ties(vectors, codebook, reference, np.full(4, 2), eps)
    assert not outside.any()
    # With no float error, only float32 rounding makes a tie: up to t ~ 2.4e-7.
    t = np.array([1e-7, 1e-6])
    vectors = np.stack([t, np.zeros_like(t)], axis=-1)
    ties = export_parity._near_ties(vectors, codebook, np.zeros(2, "int32"), np.ones(2), 0.0)
    np.testing.assert_array_equal(ties, [True, False])


def test_reference_records_the_search(reference):
    search = reference.choices["encode"]["indices"]["search"]
    np.testing.assert_array_equal(search["codebook"], CODEBOOK)
    np.testing.assert_array_equal(search["vectors"], VECTORS)  # identity encoder
    decoded = reference.choices["serving_default"]["reconstruction"]["decoded"]
    assert decoded["probe"] == "serving_default/encode" and decoded["output"] == "indices"
    np.testing.assert_array_equal(decoded["codes"], reference.outputs["encode"]["indices"])
    assert reference.probes["serving_default/encode"][0] == "encode"
    assert reference.outputs["encode"]["indices"][0, 0, 0] == 0


def test_near_tie_flip_passes_with_raw_numbers_reported(reference, tmp_path):
    parity = _litert_parity(reference, _flipping_model(), tmp_path)
    table = format_parity_table(parity)
    assert parity["ok"], table
    results = parity["results"]["litert/float32"]
    encode = results["encode"]["indices"]
    assert encode["index_agreement"] == 7 / 8  # raw: one of 8 codes flipped
    assert (encode["differing"], encode["near_ties"], encode["tie_aware_agreement"]) == (1, 1, 1.0)
    served = results["serving_default"]["reconstruction"]
    # The flipped code moves that position's 3 outputs by 0.5 * |c1 - c0|_1 = 1.0.
    assert served["max_abs_error"] == pytest.approx(1.0, abs=1e-5)
    # Against Keras's decode of the export's codes only the 3e-6 shift of code 0 remains.
    assert served["tie_resolved_max_abs_error"] <= 1e-5
    assert (served["codes_differing"], served["codes_near_ties"]) == (1, 1)
    assert results["decode"]["images"]["max_abs_error"] <= 1e-5
    row = next(line for line in table.splitlines() if "encode" in line)
    assert row.split()[3:] == ["tie_aware_agreement", "1", "1", "0.875", "-", "yes"]
    row = next(line for line in table.splitlines() if "serving_default" in line)
    assert row.split()[3] == "tie_resolved_error" and row.split()[6] == "1"


def test_same_codes_are_judged_strictly(reference, tmp_path):
    parity = _litert_parity(reference, TieVQ(), tmp_path)
    assert parity["ok"], format_parity_table(parity)
    results = parity["results"]["litert/float32"]
    assert results["encode"]["indices"]["tie_aware_agreement"] == 1.0
    assert results["encode"]["indices"]["differing"] == 0
    served = results["serving_default"]["reconstruction"]
    assert served["max_abs_error"] <= 1e-6 and "tie_resolved_max_abs_error" not in served


def test_wrong_choice_fails(reference, tmp_path):
    # The export's encoder adds 1 to the first component: the vector (-0.9, 0, 0.1, 0) at
    # (1, 0, 0), nearest code 1, becomes (0.1, 0, 0.1, 0), nearest code 0: a choice 3.6
    # farther in squared distance, where a 1e-4 float error allows ~1e-3. Every other
    # vector keeps its code; the decoder is untouched.
    wrong = TieVQ(encoder_bias=np.array([1.0, 0.0, 0.0, 0.0], "float32"))
    parity = _litert_parity(reference, wrong, tmp_path)
    assert not parity["ok"]
    results = parity["results"]["litert/float32"]
    encode = results["encode"]["indices"]
    assert (encode["differing"], encode["near_ties"], encode["ok"]) == (1, 0, False)
    assert encode["tie_aware_agreement"] == encode["index_agreement"] == 7 / 8
    served = results["serving_default"]["reconstruction"]
    assert served["ok"] is False and "tie_resolved_max_abs_error" not in served
    assert served["max_abs_error"] == pytest.approx(1.0, abs=1e-5)  # code 0 for code 1
    assert results["decode"]["images"]["ok"] is True
    table = format_parity_table(parity)
    assert [line.split()[-1] for line in table.splitlines()[1:]] == ["NO", "NO", "yes"]


def test_wrong_codebook_fails(reference, tmp_path):
    # Codes 2 and 3 swapped: the labels of the two vectors that use them are wrong and so
    # is decode, though the reconstruction (the same vectors, relabelled) is right.
    codebook = CODEBOOK[[0, 1, 3, 2]]
    parity = _litert_parity(reference, TieVQ(codebook), tmp_path)
    results = parity["results"]["litert/float32"]
    assert not parity["ok"]
    encode = results["encode"]["indices"]
    assert (encode["differing"], encode["near_ties"], encode["ok"]) == (4, 0, False)
    assert results["decode"]["images"]["ok"] is False
    assert results["serving_default"]["reconstruction"]["max_abs_error"] <= 1e-5


@pytest.mark.slow
def test_saved_model_runs_probes_and_judges_ties(reference, tmp_path):
    # The fresh-process runner also runs `encode` on serving_default's inputs.
    parity = _litert_parity(reference, _flipping_model(), tmp_path, formats=("saved_model",))
    assert parity["ok"], format_parity_table(parity)
    results = parity["results"]["saved_model"]
    assert results["encode"]["indices"]["near_ties"] == 1
    served = results["serving_default"]["reconstruction"]
    assert served["codes_near_ties"] == 1 and served["tie_resolved_max_abs_error"] <= 1e-5


def test_vqvae_declares_its_choices(tmp_path):
    model = VQVAE(
        image_shape=(8, 8, 3), codebook_size=8, embedding_dim=4, channels=(8, 8), norm_groups=4
    )
    images = np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)).astype("float32")
    reference = reference_outputs(model, {"encode": {"images": images}})
    search = reference.choices["encode"]["indices"]["search"]
    assert search["vectors"].shape == (2, 4, 4, 4) and search["codebook"].shape == (8, 4)
    distances = ((search["vectors"][..., None, :] - search["codebook"]) ** 2).sum(-1)
    np.testing.assert_array_equal(distances.argmin(-1), reference.outputs["encode"]["indices"])
    decoded = reference.choices["serving_default"]["reconstruction"]["decoded"]
    # Parity holds an export's reconstruction to its strictest float limit against this
    # decode of the codes, so the decode must reproduce Keras's own reconstruction within
    # it (they differ only by the rounding of the straight-through x + (q - x): 1.5e-6).
    np.testing.assert_allclose(
        decoded["decode"](decoded["codes"]),
        reference.outputs["serving_default"]["reconstruction"],
        atol=export_parity.MAX_ABS_ERROR["saved_model"],
        rtol=0,
    )
    parity = _litert_parity(reference, model, tmp_path)
    assert parity["ok"], format_parity_table(parity)
    assert parity["results"]["litert/float32"]["encode"]["indices"]["tie_aware_agreement"] == 1.0


def test_table_never_rounds_a_value_to_its_limit():
    # The demo row: 2,047 of 2,048 codes equal read "index_agreement 1 (limit 1) NO".
    entry = {"index_agreement": 2047 / 2048, "min_agreement": 1.0, "ok": False}
    tied = dict(entry, tie_aware_agreement=1.0, ok=True)
    error = {"max_abs_error": 1.00004e-4, "tolerance": 1e-4, "ok": False}
    parity = {
        "results": {
            "saved_model": {
                "encode": {"indices": entry, "tied": tied},
                "serving_default": {"reconstruction": error},
            }
        }
    }
    rows = [line.split()[3:] for line in format_parity_table(parity).splitlines()[1:]]
    assert rows == [
        ["index_agreement", "0.999512", "1", "-", "-", "NO"],
        ["tie_aware_agreement", "1", "1", "0.999512", "-", "yes"],
        ["max_abs_error", "0.000100004", "0.0001", "-", "-", "NO"],
    ]


def test_bad_choice_specs_are_rejected():
    class Bad(TieVQ):
        def __init__(self, choices):
            super().__init__()
            self.choices = choices

        def export_parity_choices(self):
            return self.choices

    search = {"search": lambda v: (v, ops.convert_to_tensor(CODEBOOK))}
    decoded = {"codes": ("encode", "indices"), "decode": ("decode", "images")}
    with pytest.raises(ValueError, match="endpoint names"):
        reference_outputs(Bad({"nope": {"indices": search}}), PARITY_BATCH)
    with pytest.raises(ValueError, match="has no output 'codes'"):
        reference_outputs(Bad({"encode": {"codes": search}}), PARITY_BATCH)
    with pytest.raises(ValueError, match="judges integer code outputs"):
        reference_outputs(Bad({"decode": {"images": search}}), PARITY_BATCH)
    with pytest.raises(ValueError, match="no 'search' spec"):
        reference_outputs(Bad({"serving_default": {"reconstruction": decoded}}), PARITY_BATCH)
    with pytest.raises(ValueError, match="each spec must be"):
        reference_outputs(Bad({"encode": {"indices": {"search": 1}}}), PARITY_BATCH)
