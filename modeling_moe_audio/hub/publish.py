"""Publishing checkpoints on the Hugging Face Hub: `push_checkpoint(folder, "org/name")`.

A pushed checkpoint loads anywhere with `AutoModelForCausalLM.from_pretrained("org/name", trust_remote_code=True)`
(and `AutoModel`, `AutoProcessor`), so the folder must hold the config, the three code files and safetensors
weights; pickle files are never published. The endpoint and the transfer protocol are `huggingface_hub`'s own
(`HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_DISABLE_XET`, ...). The code files published are always the installed
moe-audio's: a folder whose code files differ from them is refused and pointed to `moe-audio update-code`.
"""

import fnmatch
from pathlib import Path, PurePosixPath

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard

from .model_card import build_model_card


CODE_FILES = ("configuration_moe_audio.py", "modeling_moe_audio.py", "processing_moe_audio.py")
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # where the installed, current copies of CODE_FILES live
REQUIRED_FILES = ("config.json", *CODE_FILES)
WEIGHTS = "model.safetensors"
SHARDED_WEIGHTS_INDEX = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# What the Trainer leaves beside a model; left out of the upload (not refused). Matched on the file name.
TRAINING_LEFTOVERS = ("optimizer.pt", "scheduler.pt", "rng_state*.pth", "training_args.bin", "trainer_state.json")
# Left out as whole folders: the Trainer's intermediate checkpoints, what huggingface_hub never uploads, and the
# old files `moe-audio update-code` keeps (they hold a config.json and code that must never be published).
CODE_BACKUP_PREFIX = "code-backup-"
EXCLUDED_FOLDERS = ("checkpoint-*", ".git", ".cache", f"{CODE_BACKUP_PREFIX}*")


def outdated_code_files(folder: str | Path) -> list[str]:
    """The code files in `folder` whose bytes differ from the installed package's (missing ones are not listed)."""
    folder = Path(folder)
    return [
        name for name in CODE_FILES
        if (folder / name).is_file() and (folder / name).read_bytes() != (PACKAGE_DIR / name).read_bytes()
    ]


def checkpoint_files(folder: str | Path) -> tuple[list[str], list[str]]:
    """The files `push_checkpoint` would upload and those it leaves out, as sorted POSIX paths relative to `folder`.

    Raises `ValueError` if the folder is not a publishable checkpoint (see `push_checkpoint`).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a directory; push_checkpoint needs a checkpoint folder.")
    uploaded, excluded = [], []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = PurePosixPath(path.relative_to(folder).as_posix())
        name = relative.name
        leave_out = (
            any(fnmatch.fnmatchcase(part, pattern) for part in relative.parts[:-1] for pattern in EXCLUDED_FOLDERS)
            or any(fnmatch.fnmatchcase(name, pattern) for pattern in TRAINING_LEFTOVERS)
            or (name.endswith(".py") and str(relative) not in CODE_FILES)
        )
        (excluded if leave_out else uploaded).append(str(relative))

    missing = [name for name in REQUIRED_FILES if name not in uploaded]
    if WEIGHTS not in uploaded and SHARDED_WEIGHTS_INDEX not in uploaded:
        missing.append(WEIGHTS)
    if missing:
        raise ValueError(
            f"{folder} is not a complete checkpoint: {', '.join(missing)} missing. A pushed checkpoint must load with "
            f"trust_remote_code=True on its own: it needs config.json, the code files {', '.join(CODE_FILES)} "
            f"and {WEIGHTS} (save it with model.save_pretrained(folder) and processor.save_pretrained(folder))."
        )
    outdated = outdated_code_files(folder)
    if outdated:
        # Publishing other code than the installed one would spread checkpoints that may not run (0.1.0's crash on
        # transformers 5.24); update-code replaces them and proves the logits unchanged, which a push cannot.
        raise ValueError(
            f"{folder} carries code files that differ from the installed moe-audio's ({', '.join(outdated)}), "
            f"e.g. those of an older version; only current code is published. Bring them up to date with "
            f"`moe-audio update-code {folder}` (it keeps the old files and checks that the logits do not change), "
            f"then push again."
        )
    pickles = [path for path in uploaded if path.lower().endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise ValueError(
            f"{folder} holds pickle files ({', '.join(pickles)}): only safetensors weights are published, as "
            f"pickles can run code when loaded. Delete or move them (save with safe_serialization) and push again."
        )
    return uploaded, excluded


def push_checkpoint(
    folder: str | Path,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    model_card: str | None = None,
) -> str:
    """Upload a checkpoint folder to the Hub model repo `repo_id` (created if needed) in one commit.

    Refuses (`ValueError`) a folder without `config.json`, the three code files (`configuration_moe_audio.py`,
    `modeling_moe_audio.py`, `processing_moe_audio.py`) or `model.safetensors`, and one that holds pickle files
    (`*.bin`, `*.pt`, `*.pth`, `*.ckpt`, `*.pkl`). Leaves out training leftovers (`optimizer.pt`, `scheduler.pt`,
    `rng_state*.pth`, `training_args.bin`, `trainer_state.json`), any other `.py` file, the Trainer's `checkpoint-*`
    folders and update-code's `code-backup-*` folders. Refuses code files that differ from the installed package's
    (run `moe-audio update-code FOLDER` first). `revision` is an existing branch (default `main`). `private` applies
    only when the repo is created. `model_card` (text) is published as `README.md` instead of the folder's own,
    which is left untouched. Returns the commit URL (a `huggingface_hub.CommitInfo`, a `str` with `.oid`, the commit
    sha).
    """
    uploaded, _ = checkpoint_files(folder)
    operations = [
        CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(Path(folder) / path))
        for path in uploaded
        if not (model_card is not None and path == "README.md")
    ]
    if model_card is not None:
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=model_card.encode()))
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    return api.create_commit(
        repo_id=repo_id,
        repo_type="model",
        operations=operations,
        revision=revision,
        commit_message=commit_message or "Upload MoE audio checkpoint",
    )


def card_for_repo(folder: str | Path, repo_id: str) -> str:
    """The folder's card with its usage snippet and title naming `repo_id`; a new card if the folder has none.

    Cards written by moe-audio name their folder until published; the folder's own README.md is not changed.
    """
    folder = Path(folder)
    path = folder / "README.md"
    if not path.is_file():
        return str(build_model_card(folder, repo_id=repo_id))
    card = ModelCard.load(path)
    for local_name in (str(folder), folder.name):
        card.text = card.text.replace(f'"{local_name}"', f'"{repo_id}"').replace(f"# {local_name}\n", f"# {repo_id}\n")
    return str(card)


def publish(folder: str | Path, repo_id: str, token: str | None = None, private: bool = False,
            revision: str | None = None) -> str:
    return push_checkpoint(folder, repo_id, token=token, private=private, revision=revision,
                           model_card=card_for_repo(folder, repo_id))
