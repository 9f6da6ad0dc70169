"""Publishing on the Hub and loading back by repo id, against a test double of the Hub (`hub_server.FakeHubServer`).

Loading happens in fresh processes where the package cannot be imported, with an empty Hugging Face cache, so
only the files the Hub serves are used; then again from that cache with the server stopped and HF_HUB_OFFLINE=1.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForCausalLM, AutoProcessor

from modeling_moe_audio.checkpoints.build import init_checkpoint
from modeling_moe_audio.data.corpus import write_corpus
from modeling_moe_audio.data.collator import MoEAudioDataCollator
from modeling_moe_audio.data.manifest import load_manifest
from modeling_moe_audio.hub.publish import CODE_FILES, checkpoint_files, push_checkpoint
from modeling_moe_audio.presets import load_config, shipped_tokenizer
from modeling_moe_audio.commands.train import build_parser
from modeling_moe_audio.training.trainer import build_trainer, save_final, train

from hub_server import FakeHubServer
from remote_code import PRELUDE


# huggingface_hub's LFS upload passes the file as `data=` to httpx2, which warns; nothing of ours.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

REPO = "user/tiny-moe-audio"
PROMPT = "Listen: <|audio_pad|> Is the voice high or low?"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("init") / "tiny"
    init_checkpoint(load_config("tiny-4s"), folder, tokenizer=shipped_tokenizer("tiny-4s"), seed=0)
    return folder


@pytest.fixture
def hub(tmp_path):
    """A running test double of the Hub that this process's huggingface_hub and transformers talk to."""
    import huggingface_hub.constants as constants
    import transformers.utils.hub as transformers_hub

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


def run_fresh(code: str, home: Path, cwd: Path, hub: FakeHubServer | None = None, timeout: int = 300) -> str:
    """Run `code` in a new process without the package, with HF_HOME=`home`; online against `hub`, else offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE_", "TRANSFORMERS_"))}
    env.update(PYTHONPATH="", HF_HOME=str(home), HF_HUB_CACHE=str(home / "hub"), HF_MODULES_CACHE=str(home / "modules"),
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1")
    if hub is not None:
        env.update(hub.client_env())
    else:
        env.update(HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9")  # nothing listens there: the cache must do
    result = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"subprocess failed:\n{result.stdout}\n{result.stderr[-6000:]}")
    return result.stdout


def local_outputs(folder: Path, audio: np.ndarray) -> dict:
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    batch = processor(text=[PROMPT], audio=[audio], sampling_rate=16000)
    with torch.no_grad():
        logits = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()(**batch).logits
        hidden = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()(**batch).last_hidden_state
    return {"batch": dict(batch), "logits": logits, "hidden": hidden}


# Loads `repo` (at `revision`) with the three Auto classes and checks them against `expected` bit for bit.
LOAD_AND_COMPARE = """
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoProcessor

saved = torch.load("expected.pt", weights_only=False)

def check(revision, expected):
    processor = AutoProcessor.from_pretrained({repo!r}, revision=revision, trust_remote_code=True)
    batch = processor(text=[saved["prompt"]], audio=[saved["audio"]], sampling_rate=16000)
    assert batch.keys() == expected["batch"].keys()
    for key in batch:
        assert torch.equal(batch[key], expected["batch"][key]), key
    model = AutoModelForCausalLM.from_pretrained({repo!r}, revision=revision, trust_remote_code=True).eval()
    base = AutoModel.from_pretrained({repo!r}, revision=revision, trust_remote_code=True).eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, expected["logits"]), "logits differ"
        assert torch.equal(base(**batch).last_hidden_state, expected["hidden"]), "hidden states differ"
    print(revision, type(model).__name__, type(base).__name__, type(processor).__name__)

for revision, key in saved["checks"]:
    check(revision, saved[key])
"""


def test_push_then_load_by_repo_id_online_and_offline(checkpoint, hub, tmp_path):
    audio = np.sin(np.linspace(0, 2200 * np.pi, 16000)).astype(np.float32)  # 1 s, 1.1 kHz
    v1 = local_outputs(checkpoint, audio)

    first = push_checkpoint(checkpoint, REPO, token="dummy")
    repo = hub.repos[REPO]
    local_files = sorted(path.name for path in checkpoint.iterdir())
    assert set(CODE_FILES) <= set(local_files) and "model.safetensors" in local_files
    # One commit on top of the repo's initial one, holding every file of the folder.
    assert [commit.sha for commit in repo.commits][1:] == [first.oid] and first.endswith(f"/commit/{first.oid}")
    assert sorted(repo.commits[1].changed) == local_files
    assert sorted(repo.resolve("main").files) == sorted([".gitattributes", *local_files])
    assert repo.resolve("main").files["model.safetensors"].lfs_oid is not None  # went through the LFS batch API

    # A second version (weights only changed) moves `main`; the first stays reachable by its sha.
    v2_folder = tmp_path / "v2"
    shutil.copytree(checkpoint, v2_folder)
    weights = load_file(v2_folder / "model.safetensors")
    save_file({name: tensor * 1.1 for name, tensor in weights.items()}, v2_folder / "model.safetensors",
              metadata={"format": "pt"})
    v2 = local_outputs(v2_folder, audio)
    assert not torch.equal(v1["logits"], v2["logits"])
    second = push_checkpoint(v2_folder, REPO, token="dummy", commit_message="v2")
    assert repo.branches["main"] == second.oid and repo.commits[-1].changed == {"model.safetensors"}

    torch.save({"prompt": PROMPT, "audio": audio, "v1": v1, "v2": v2,
                "checks": [(None, "v2"), ("main", "v2"), (first.oid, "v1")]}, tmp_path / "expected.pt")
    home = tmp_path / "hf-home"
    code = LOAD_AND_COMPARE.format(repo=REPO)
    printed = run_fresh(code, home, cwd=tmp_path, hub=hub)
    assert printed.split("\n")[:3] == [
        f"{revision} MoEAudioForCausalLM MoEAudioModel MoEAudioProcessor" for revision in ("None", "main", first.oid)
    ]
    assert f"/{REPO}/resolve/{first.oid}/modeling_moe_audio.py" in {path for _, path in hub.requests}
    snapshots = home / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots"
    assert sorted(path.name for path in snapshots.iterdir()) == sorted([first.oid, second.oid])

    # The cache now holds both revisions: they load with the server stopped and HF_HUB_OFFLINE=1.
    hub.stop()
    served = len(hub.requests)
    printed = run_fresh(code, home, cwd=tmp_path, hub=None)
    assert printed.count("MoEAudioForCausalLM MoEAudioModel MoEAudioProcessor") == 3
    assert len(hub.requests) == served


def test_push_checkpoint_refuses_incomplete_folders_and_pickles(checkpoint, tmp_path):
    def copy(name):
        return Path(shutil.copytree(checkpoint, tmp_path / name))

    missing_code = copy("missing-code")
    (missing_code / "modeling_moe_audio.py").unlink()
    with pytest.raises(ValueError, match=r"not a complete checkpoint: modeling_moe_audio\.py missing"):
        push_checkpoint(missing_code, REPO)

    missing_weights = copy("missing-weights")
    (missing_weights / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"model\.safetensors missing"):
        push_checkpoint(missing_weights, REPO)

    pickled = copy("pickled")
    torch.save({}, pickled / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"holds pickle files \(pytorch_model\.bin\): only safetensors"):
        push_checkpoint(pickled, REPO)

    with pytest.raises(ValueError, match="is not a directory"):
        push_checkpoint(tmp_path / "nowhere", REPO)


def test_push_checkpoint_leaves_out_training_leftovers(checkpoint, hub, tmp_path):
    folder = Path(shutil.copytree(checkpoint, tmp_path / "trained"))
    leftovers = ["optimizer.pt", "scheduler.pt", "rng_state.pth", "rng_state_1.pth", "training_args.bin",
                 "trainer_state.json", "train.py", "checkpoint-2/model.safetensors", "checkpoint-2/optimizer.pt"]
    for name in leftovers:
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_bytes(b"leftover")
    (folder / "train_results.json").write_text(json.dumps({"train_loss": 1.0}))

    uploaded, excluded = checkpoint_files(folder)
    assert excluded == sorted(leftovers)
    info = push_checkpoint(folder, "user/trained", token="dummy", private=True)
    repo = hub.repos["user/trained"]
    assert repo.private and repo.branches["main"] == info.oid
    assert sorted(repo.commits[-1].changed) == uploaded == sorted(
        [path.name for path in checkpoint.iterdir()] + ["train_results.json"]
    )


def parse(checkpoint, corpus, output_dir, repo_id, *extra):
    return build_parser().parse_args_into_dataclasses(args=[
        "--model", str(checkpoint), "--train_data", str(corpus["train"]), "--output_dir", str(output_dir),
        "--use_cpu", "--report_to", "none", "--disable_tqdm", "true", "--seed", "0", "--data_seed", "0",
        "--dataloader_num_workers", "0", "--save_strategy", "no", "--per_device_train_batch_size", "2",
        "--push_to_hub", "--hub_model_id", repo_id, "--hub_token", "dummy", *extra,
    ])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), seed=3, sizes={"train": 4, "validation": 1, "test": 1})


def test_trainer_push_to_hub_then_load_by_repo_id(checkpoint, corpus, hub, tmp_path):
    output_dir = tmp_path / "run"
    script_args, training_args = parse(checkpoint, corpus, output_dir, "user/trained", "--max_steps", "2",
                                       "--stage", "full", "--learning_rate", "1e-2")
    metrics = train(script_args, training_args)
    # moe-audio train publishes the final model itself, in one commit: weights, processor, the three code files and
    # a card naming the repo; no pickles, and none of the Trainer's partial checkpoint pushes.
    repo = hub.repos["user/trained"]
    files = set(repo.resolve("main").files)
    assert repo.branches["main"] in metrics["hub_commit"]
    assert {"config.json", "model.safetensors", "processor_config.json", "README.md", *CODE_FILES} <= files
    assert not {"training_args.bin", "optimizer.pt", "trainer_state.json"} & files
    card = repo.resolve("main").files["README.md"].content.decode()
    assert 'from_pretrained("user/trained", trust_remote_code=True)' in card and "custom_code" in card

    # The trained weights, not the initial ones, load by repo id in a fresh process without the package.
    processor = AutoProcessor.from_pretrained(output_dir, trust_remote_code=True)
    dataset, _ = load_manifest(corpus["train"])
    batch = MoEAudioDataCollator(processor)([dataset[0], dataset[1]])
    batch.pop("labels")
    with torch.no_grad():
        trained = AutoModelForCausalLM.from_pretrained(output_dir, trust_remote_code=True).eval()(**batch).logits
        initial = AutoModelForCausalLM.from_pretrained(checkpoint, trust_remote_code=True).eval()(**batch).logits
    assert not torch.equal(trained, initial)
    torch.save({"batch": dict(batch), "logits": trained}, tmp_path / "trained.pt")
    printed = run_fresh(
        """
        import torch
        from transformers import AutoModelForCausalLM, AutoProcessor
        saved = torch.load("trained.pt", weights_only=False)
        model = AutoModelForCausalLM.from_pretrained("user/trained", trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained("user/trained", trust_remote_code=True)
        with torch.no_grad():
            assert torch.equal(model(**saved["batch"]).logits, saved["logits"]), "logits differ"
        print(type(model).__name__, type(processor).__name__)
        """,
        tmp_path / "hf-home", cwd=tmp_path, hub=hub,
    )
    assert printed.split() == ["MoEAudioForCausalLM", "MoEAudioProcessor"]


def test_trainer_end_of_training_push_uploads_the_code_files(checkpoint, corpus, hub, tmp_path):
    """`trainer.push_to_hub()` (which `train()` does not call) saves through the remote-code classes: code included."""
    script_args, training_args = parse(checkpoint, corpus, tmp_path / "run", "user/end", "--max_steps", "1")
    trainer = build_trainer(script_args, training_args)
    save_final(trainer, training_args.output_dir)
    trainer.push_to_hub()
    commit = hub.repos["user/end"].commits[-1]
    assert commit.message == "End of training"
    assert {"config.json", "model.safetensors", "processor_config.json", *CODE_FILES} <= commit.changed


def test_push_command_names_the_repo_in_the_card_and_leaves_the_folder_alone(checkpoint, hub, tmp_path):
    before = (checkpoint / "README.md").read_bytes()
    result = subprocess.run(
        [str(Path(sys.executable).parent / "moe-audio"), "push", str(checkpoint), "user/cli-pushed", "--token", "dummy"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "home")},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    card = hub.repos["user/cli-pushed"].resolve("main").files["README.md"].content.decode()
    assert 'from_pretrained("user/cli-pushed", trust_remote_code=True)' in card
    assert str(checkpoint) not in card
    assert (checkpoint / "README.md").read_bytes() == before
