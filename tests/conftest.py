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


# Seconds of the longest units (a test file, or one document of test_docs.py):
# the sums of `pytest -n 2 --durations=0` per unit in one sitting on 2 cores
# (2026-12-07, AVX2 host, partly loaded: only the order matters here). Units not
# listed take under 40 s each and go last, in file order. Refresh the table when a
# unit's time changes much: a long unit started last is what makes `make test` late.
DOCS = "tests/test_docs.py::test_document_blocks_run"
EXPECTED_S = {
    "tests/test_text2image.py": 330,
    f"{DOCS}[README.md]": 263,
    f"{DOCS}[docs/text2image_shapes.md]": 238,
    f"{DOCS}[docs/ddpm_unet_shapes.md]": 219,
    "tests/test_code_prior.py": 208,
    "tests/integration/test_cli.py": 186,
    "tests/test_captioner.py": 154,
    "tests/integration/test_multi_worker.py": 141,
    f"{DOCS}[docs/caption_prior_shapes.md]": 134,
    f"{DOCS}[docs/convert.md]": 122,
    f"{DOCS}[docs/dit_shapes.md]": 102,
    "tests/test_benchmarks.py": 101,
    f"{DOCS}[docs/code_prior_shapes.md]": 99,
    f"{DOCS}[docs/captioner_shapes.md]": 95,
    "tests/test_metrics.py": 92,
    "tests/test_parity.py": 92,
    f"{DOCS}[docs/vqgan_shapes.md]": 92,
    "tests/test_quantizer_export.py": 90,
    "tests/integration/test_resume_after_kill.py": 90,
    f"{DOCS}[docs/vqvae_shapes.md]": 88,
    "tests/test_export.py": 110,
    f"{DOCS}[docs/clip_shapes.md]": 71,
    f"{DOCS}[docs/latent_dit_shapes.md]": 69,
    "tests/test_vqgan.py": 69,
    "tests/test_diffusion_export.py": 68,
    "tests/test_resume.py": 67,
    "tests/integration/test_precision.py": 65,
    "tests/test_dual_encoder_export.py": 62,
    "tests/test_dual_encoder.py": 59,
    "tests/integration/test_cli_crossmodal.py": 58,
    "tests/test_serving_kit.py": 45,
    "tests/test_own_data.py": 44,
    "tests/test_vqvae.py": 43,
}


def _unit_of_nodeid(nodeid):
    """The unit `make test` hands to a worker: one document of test_docs.py, else a file."""
    if nodeid.startswith(DOCS + "["):
        return nodeid
    return nodeid.split("::")[0]


def _unit(item):
    return _unit_of_nodeid(item.nodeid)


def pytest_collection_modifyitems(session, config, items):
    """Hand out the longest units first: sort the tests by their unit's expected time.

    With `make test`'s scheduler (below) units are handed out in collection order,
    so that the two workers finish together (the documents alone take about a third
    of the suite's CPU time).
    """
    items.sort(key=lambda item: -EXPECTED_S.get(_unit(item), 0))


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: absent without -n
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadscope` with `_unit` as the scope: a unit runs whole on one worker.

    A file's module fixtures are then built once, and each document of
    test_docs.py is its own unit. (`--dist loadgroup` would do this from
    `xdist_group` marks, but pytest-xdist 3.8 tags the node ids through an
    attribute pytest 9.2 no longer reads, so the marks group nothing.) Units keep
    collection order under `--no-loadscope-reorder`.
    """
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class UnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return _unit_of_nodeid(nodeid)

    return UnitScheduling(config, log)
