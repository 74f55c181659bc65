import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Grappler rewrites every traced graph before its first run: seconds per traced
# train step (a tiny U-Net's first `train_on_batch`: 17.8 s with it, 11.5 s
# without) and no change in what the graph computes. Tests run a few steps of
# many graphs, so this process skips it; the processes tests start (CLI runs,
# the fresh-process SavedModel check, multi-worker workers) keep it, and
# KZOO_TEST_GRAPPLER=1 turns it back on here.
if os.environ.get("KZOO_TEST_GRAPPLER") != "1":
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})


@pytest.fixture(autouse=True)
def _float32_policy():
    """Every test starts (and ends) under the float32 policy with fixed seeds."""
    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(0)
    yield
    keras.mixed_precision.set_global_policy("float32")


def pytest_collection_modifyitems(session, config, items):
    """Collect test_docs.py first.

    `make test` hands whole files to two workers (`--dist loadfile`) in collection
    order. test_docs.py runs every document in one shared scratch copy, so it is one
    serial unit of about a third of the suite's CPU time: started last, it ran alone
    on one core for its whole length; started first, the other worker takes every
    other file meanwhile.
    """
    items.sort(key=lambda item: item.nodeid.split("::")[0] != "tests/test_docs.py")
