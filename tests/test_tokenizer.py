import numpy as np
import pytest
import tensorflow as tf

from kzoo.data import generate
from kzoo.data.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    Tokenizer,
    build_vocabulary,
    shapes_vocabulary,
)

CAPTION = "a small red circle at the top left on a blue background"


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_shapes_vocabulary(sequence_length=16)


def test_special_ids_come_first(tokenizer):
    assert tokenizer.get_vocabulary()[:4] == ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    assert tokenizer.vocabulary_size == 4 + len(shapes_vocabulary()) == 33


def test_shapes_vocabulary_covers_every_caption(tokenizer):
    captions = generate(300, image_size=16, seed=7)["caption"]
    ids = tokenizer(list(captions)).numpy()
    assert ids.dtype == np.int32 and ids.shape == (300, 16)
    assert not np.any(ids == UNK_ID)
    assert ids.max() < tokenizer.vocabulary_size
    # Longest caption: 12 words; every row is padded on the right only.
    lengths = (ids != PAD_ID).sum(axis=1)
    assert lengths.max() <= 12
    for row, length in zip(ids, lengths, strict=True):
        assert np.all(row[:length] != PAD_ID) and np.all(row[length:] == PAD_ID)


def test_ids_of_a_caption(tokenizer):
    ids = tokenizer([CAPTION]).numpy()[0]
    vocab = tokenizer.get_vocabulary()
    assert len(CAPTION.split()) == 12
    assert [vocab[i] for i in ids[:12]] == CAPTION.split()
    assert list(ids[12:]) == [PAD_ID] * 4


def test_standardization_lowercases_and_strips_punctuation(tokenizer):
    ids = tokenizer(["A Small, RED circle!!", "a small red circle", "a;small:red(circle)"]).numpy()
    np.testing.assert_array_equal(ids[0], ids[1])
    np.testing.assert_array_equal(ids[2], ids[1])


def test_unknown_words_and_typed_special_tokens_are_unk(tokenizer):
    ids = tokenizer(["a zebra", "[bos] [EOS] [pad]"]).numpy()
    assert list(ids[0][:3]) == [tokenizer.get_vocabulary().index("a"), UNK_ID, PAD_ID]
    # Brackets are punctuation: a user cannot type a special token.
    assert list(ids[1][:4]) == [UNK_ID, UNK_ID, UNK_ID, PAD_ID]


def test_empty_and_punctuation_only_strings_are_all_padding(tokenizer):
    ids = tokenizer(["", "  ", "?!."]).numpy()
    assert np.all(ids == PAD_ID)
    with_specials = tokenizer.tokenize([""], add_bos=True, add_eos=True).numpy()[0]
    assert list(with_specials[:3]) == [BOS_ID, EOS_ID, PAD_ID]


def test_long_captions_are_truncated_keeping_the_first_words():
    tokenizer = Tokenizer.from_shapes_vocabulary(sequence_length=5)
    ids = tokenizer([CAPTION]).numpy()[0]
    np.testing.assert_array_equal(ids, tokenizer(["a small red circle at"]).numpy()[0])
    # [BOS]/[EOS] always fit: the words are cut to make room.
    ids = tokenizer.tokenize([CAPTION], add_bos=True, add_eos=True).numpy()[0]
    vocab = tokenizer.get_vocabulary()
    assert [vocab[i] for i in ids] == ["[BOS]", "a", "small", "red", "[EOS]"]


def test_detokenize_inverts_tokenize_and_stops_at_eos(tokenizer):
    captions = ["a small red circle", CAPTION, ""]
    ids = tokenizer.tokenize(captions, add_bos=True, add_eos=True)
    assert [s.decode() for s in tokenizer.detokenize(ids).numpy()] == captions
    vocab = tokenizer.get_vocabulary()
    ids = [[BOS_ID, vocab.index("a"), 999, vocab.index("ring"), EOS_ID, vocab.index("red"), 0]]
    assert tokenizer.detokenize(ids).numpy()[0] == b"a [UNK] ring"


def test_runs_in_tf_data_and_in_a_string_signature(tokenizer):
    dataset = tf.data.Dataset.from_tensor_slices(["a ring", "a red square"]).batch(2)
    batch = next(iter(dataset.map(tokenizer)))
    np.testing.assert_array_equal(batch.numpy(), tokenizer(["a ring", "a red square"]).numpy())

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def roundtrip(strings):
        return tokenizer.detokenize(tokenizer(strings))

    assert roundtrip(tf.constant(["A ring!"])).numpy()[0] == b"a ring"
    assert roundtrip(tf.zeros([0], tf.string)).shape == (0,)


def test_config_round_trip_keeps_the_vocabulary(tokenizer):
    config = tokenizer.get_config()
    assert config["vocabulary"] == shapes_vocabulary()
    clone = Tokenizer.from_config(config)
    assert clone.get_config() == config
    np.testing.assert_array_equal(clone([CAPTION]).numpy(), tokenizer([CAPTION]).numpy())


def test_build_vocabulary_orders_by_count_then_alphabetically():
    captions = ["a red circle", "A blue circle.", "a circle"]
    assert build_vocabulary(captions) == ["a", "circle", "blue", "red"]
    assert build_vocabulary(captions, max_words=2) == ["a", "circle"]
    assert build_vocabulary(captions, min_count=2) == ["a", "circle"]
    tokenizer = Tokenizer.from_captions(captions, sequence_length=4)
    assert tokenizer(["red circle"]).numpy().tolist() == [[7, 5, 0, 0]]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"vocabulary": []}, "non-empty list"),
        ({"vocabulary": "imagenet"}, "kzoo_shapes"),
        ({"vocabulary": ["a", "[UNK]"]}, "special tokens"),
        ({"vocabulary": ["a", "a"]}, "unique"),
        ({"vocabulary": ["two words"]}, "whitespace"),
        ({"vocabulary": ["a"], "sequence_length": 0}, "sequence_length"),
        ({"vocabulary": ["a"], "sequence_length": 2, "add_bos": True, "add_eos": True}, ">= 3"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Tokenizer(**kwargs)


def test_bad_inputs_raise(tokenizer):
    with pytest.raises(ValueError, match="wrap one string in a list"):
        tokenizer("a circle")
    with pytest.raises(ValueError, match="tf.string"):
        tokenizer(tf.constant([1, 2]))
    with pytest.raises(ValueError, match=r"shape \(batch,\)"):
        tokenizer(tf.constant([["a"], ["b"]]))
    with pytest.raises(ValueError, match="integer token ids"):
        tokenizer.detokenize(tf.constant([[1.0]]))
    with pytest.raises(ValueError, match="max_words"):
        build_vocabulary(["a"], max_words=0)


def test_a_text_encoder_that_cannot_read_the_ids_is_refused_by_every_text_model(tokenizer):
    from kzoo.diffusion import DiffusionModel
    from kzoo.models import DualEncoder, TextEncoder
    from kzoo.testing import tiny_unet

    size = tokenizer.vocabulary_size
    tokenizer.check_encoder(TextEncoder(size, 16, hidden_dim=8, num_layers=1, num_heads=2))
    too_few = TextEncoder(size - 1, 16, hidden_dim=8, num_layers=1, num_heads=2)
    too_short = TextEncoder(size, 8, hidden_dim=8, num_layers=1, num_heads=2)
    few = rf"{size - 1} token embeddings.*emits {size} ids.*vocabulary_size={size - 1}"
    short = r"takes 8 tokens but the tokenizer emits 16.*sequence_length=8"
    for encoder, match in ((too_few, few), (too_short, short)):
        with pytest.raises(ValueError, match=match):
            tokenizer.check_encoder(encoder)
        with pytest.raises(ValueError, match=match):
            DiffusionModel(tiny_unet(context_dim=8), text_encoder=encoder, tokenizer=tokenizer)
        with pytest.raises(ValueError, match=match):
            DualEncoder(
                text_encoder=encoder,
                image_encoder={
                    "image_shape": (16, 16, 3),
                    "kind": "vit",
                    "patch_size": 4,
                    "hidden_dim": 8,
                    "num_layers": 1,
                    "num_heads": 2,
                },
                tokenizer=tokenizer,
                embedding_dim=4,
            )
