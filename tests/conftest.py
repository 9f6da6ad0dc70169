"""Fixtures shared by the test files (the helpers are in helpers.py).

The checkpoints and corpora are built once per session and shared: a test must not write into them. One that does
takes a copy (`tiny_checkpoint_copy`); at the end of the session each shared checkpoint is checked to be unchanged.
"""

import hashlib
import shutil

import pytest

from helpers import tiny_model


@pytest.fixture(autouse=True)
def progress_bars_back_on():
    """A command run in-process with `--no_progress` turns transformers' progress switch off for the whole process;
    every test starts with it on, as a fresh process would."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.enable_progress_bar()
    yield


def _contents(folder):
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def _shared_checkpoint(tmp_path_factory, name, **overrides):
    """The `tiny-4s` preset (with `overrides`) initialised with seed 0 and the shipped tokenizer; checked unchanged."""
    from modeling_moe_audio.checkpoints.build import init_checkpoint
    from modeling_moe_audio.presets import load_config, shipped_tokenizer

    folder = tmp_path_factory.mktemp(name) / "tiny"
    init_checkpoint(load_config("tiny-4s", **overrides), folder, tokenizer=shipped_tokenizer("tiny-4s"), seed=0)
    contents = _contents(folder)
    yield folder
    assert _contents(folder) == contents, f"a test wrote into the shared checkpoint {folder}: use a copy"


@pytest.fixture
def model():
    return tiny_model()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """The tiny MoE checkpoint (`moe-audio init --config tiny-4s`, seed 0, with its processor). Read-only."""
    yield from _shared_checkpoint(tmp_path_factory, "tiny-checkpoint")


@pytest.fixture(scope="session")
def tiny_dense_checkpoint(tmp_path_factory):
    """The same with the dense adapter (`tiny-4s`, adapter_type dense, seed 0, with its processor). Read-only."""
    yield from _shared_checkpoint(tmp_path_factory, "tiny-dense-checkpoint", adapter_type="dense")


@pytest.fixture
def tiny_checkpoint_copy(tiny_checkpoint, tmp_path):
    """A copy of `tiny_checkpoint` of this test's own, to write into."""
    return shutil.copytree(tiny_checkpoint, tmp_path / "tiny-checkpoint")


@pytest.fixture(scope="session")
def make_corpus(tmp_path_factory):
    """`make_corpus(seed, sizes)`: the built-in corpus written once per session for each (seed, sizes); returns the
    manifest of each split (a fresh dict each call). Shared: a test that writes files copies the folder first."""
    from modeling_moe_audio.data.corpus import write_corpus

    written = {}

    def make(seed, sizes):
        key = (seed, tuple(sorted(sizes.items())))
        if key not in written:
            name = f"corpus-seed{seed}-" + "-".join(f"{split}{size}" for split, size in key[1])
            written[key] = write_corpus(tmp_path_factory.mktemp(name), seed=seed, sizes=sizes)
        return dict(written[key])

    return make


@pytest.fixture
def hub(tmp_path):
    """A running test double of the Hub that this process's huggingface_hub and transformers talk to."""
    import huggingface_hub.constants as constants
    import transformers.utils.hub as transformers_hub

    from hub_server import FakeHubServer

    with FakeHubServer() as server, pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "agent_harnesses.json"))  # not in ~/.cache
        # huggingface_hub reads HF_ENDPOINT and HF_HUB_DISABLE_XET at import time: point its constants at the server.
        patch.setattr(constants, "ENDPOINT", server.endpoint)
        template = server.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        patch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        patch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        patch.setattr(transformers_hub, "_hf_api", None)  # the Trainer's shared HfApi, rebuilt on the new endpoint
        yield server
        assert server.unhandled == [], f"requests the test double does not implement: {server.unhandled}"
