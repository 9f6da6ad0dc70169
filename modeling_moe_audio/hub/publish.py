"""Publishing checkpoints on the Hugging Face Hub: `push_checkpoint(folder, "org/name")`.

A pushed checkpoint loads anywhere with `AutoModelForCausalLM.from_pretrained("org/name", trust_remote_code=True)`
(and `AutoModel`, `AutoProcessor`), so the folder must hold the config, the three code files and safetensors
weights; pickle files are never published. The endpoint and the transfer protocol are `huggingface_hub`'s own
(`HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_DISABLE_XET`, ...). The code files published are always the installed
moe-audio's: a folder whose code files differ from them is refused and pointed to `moe-audio update-code`.
"""

import fnmatch
import re
from pathlib import Path, PurePosixPath

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard

from ..checkpoints.files import (
    CODE_BACKUP_PREFIX,
    CODE_FILES,
    SHARDED_WEIGHTS_INDEX,
    WEIGHTS,
    is_safetensors_file,
    outdated_code_files,
)
from ..checkpoints.model_card import build_model_card


REQUIRED_FILES = ("config.json", *CODE_FILES)
# What a model repository holds, and nothing else: config, code, safetensors weights, processor and tokenizer files,
# the card and the training summary (published without local paths).
ALLOWED_FILES = (
    "config.json", "generation_config.json", *CODE_FILES, WEIGHTS, SHARDED_WEIGHTS_INDEX, "model-*-of-*.safetensors",
    "processor_config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja",
    "chat_template.json", "README.md", "train_results.json",
)
# What training and update-code leave beside a model: left out without a word of blame. Matched on the file name,
# or (folders) on any folder of the path: the Trainer's checkpoints, TensorBoard logs (they hold the full
# TrainingArguments, local paths and the host name), update-code's backups (old code), and what git and the Hub
# client keep.
TRAINING_LEFTOVERS = ("optimizer.pt", "scheduler.pt", "rng_state*.pth", "training_args.bin", "trainer_state.json",
                      "all_results.json", "eval_results.json")
EXCLUDED_FOLDERS = ("checkpoint-*", ".saving-*", "runs", ".git", ".cache", f"{CODE_BACKUP_PREFIX}*")
# An absolute local path inside a published text (a card, a training summary): published as its last part.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".gz", ".npy", ".npz")
LOCAL_PATH = re.compile(r"(?<![\w.:/~-])(?:~|/)[^\s`'\"()<>]*/([^\s`'\"()<>/]+)")


def _is_left_out(relative: PurePosixPath) -> bool:
    return (
        any(fnmatch.fnmatchcase(part, pattern) for part in relative.parts[:-1] for pattern in EXCLUDED_FOLDERS)
        or any(fnmatch.fnmatchcase(relative.name, pattern) for pattern in TRAINING_LEFTOVERS)
        or (relative.suffix == ".py" and str(relative) not in CODE_FILES)
    )


def _refusal(folder: Path, path: Path, relative: PurePosixPath) -> str | None:
    """Why the file at `path` must not be published, or None."""
    if path.is_symlink() and folder.resolve() not in path.resolve().parents:
        return "a link to a file outside the folder"
    if len(relative.parts) > 1 or not any(fnmatch.fnmatchcase(relative.name, name) for name in ALLOWED_FILES):
        return "not part of a model repository"
    if relative.suffix == ".safetensors" and not is_safetensors_file(path):
        return "named .safetensors but not a safetensors file (a pickle can run code when loaded)"
    return None


def checkpoint_files(folder: str | Path) -> tuple[list[str], list[str]]:
    """The files `push_checkpoint` would upload and those it leaves out, as sorted POSIX paths relative to `folder`.

    Raises `ValueError` if the folder is not a publishable checkpoint (see `push_checkpoint`), naming each file
    that is refused and why.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a directory; push_checkpoint needs a checkpoint folder.")
    uploaded, excluded, refused = [], [], []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink()):
        relative = PurePosixPath(path.relative_to(folder).as_posix())
        if _is_left_out(relative):
            excluded.append(str(relative))
        elif (reason := _refusal(folder, path, relative)) is not None:
            refused.append(f"{relative} ({reason})")
        else:
            uploaded.append(str(relative))

    missing = [name for name in REQUIRED_FILES if name not in uploaded]
    if WEIGHTS not in uploaded and SHARDED_WEIGHTS_INDEX not in uploaded:
        missing.append(WEIGHTS)
    if missing and not refused:
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
    pickles = [item.split(" (")[0] for item in refused if item.split(" (")[0].lower().endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise ValueError(
            f"{folder} holds pickle files ({', '.join(pickles)}): only safetensors weights are published, as "
            f"pickles can run code when loaded. Delete or move them (save with safe_serialization) and push again."
        )
    if refused:
        raise ValueError(
            f"{folder} holds files a model repository does not publish: {'; '.join(refused)}. A push uploads only "
            f"the config, the code, safetensors weights, the processor and tokenizer files, the card and "
            f"train_results.json; move the others out of the folder (nothing else is uploaded) and push again."
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
    texts = {"README.md": model_card} if model_card is not None else {}
    if "train_results.json" in uploaded:
        texts["train_results.json"] = (Path(folder) / "train_results.json").read_text(encoding="utf-8")
    operations = [
        CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(Path(folder) / path))
        for path in uploaded
        if path not in texts
    ]
    for path, text in texts.items():
        operations.append(CommitOperationAdd(path_in_repo=path, path_or_fileobj=without_local_paths(text).encode()))
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    return api.create_commit(
        repo_id=repo_id,
        repo_type="model",
        operations=operations,
        revision=revision,
        commit_message=commit_message or "Upload MoE audio checkpoint",
    )


def without_local_paths(text: str) -> str:
    """`text` with every absolute local path (`/home/me/runs/x`, `~/data/y`) cut to its last part (`x`, `y`)."""
    return LOCAL_PATH.sub(lambda match: match[1], text)


def card_for_repo(folder: str | Path, repo_id: str) -> str:
    """The folder's card with its usage snippet and title naming `repo_id`; a new card if the folder has none.

    Cards written by moe-audio name their folder (by whatever path it was written through) until published; every
    `from_pretrained(...)` of the card names `repo_id` instead. The folder's own README.md is not changed.
    """
    folder = Path(folder)
    path = folder / "README.md"
    if not path.is_file():
        return str(build_model_card(folder, repo_id=repo_id))
    card = ModelCard.load(path)
    card.text = re.sub(r'from_pretrained\(\s*"[^"]*"', f'from_pretrained("{repo_id}"', card.text)
    card.text = re.sub(r"^# .*$", f"# {repo_id}", card.text, count=1, flags=re.MULTILINE)
    if getattr(card.data, "model_name", None):
        card.data.model_name = repo_id
    return str(card)


def publish(folder: str | Path, repo_id: str, token: str | None = None, private: bool = False,
            revision: str | None = None) -> str:
    return push_checkpoint(folder, repo_id, token=token, private=private, revision=revision,
                           model_card=card_for_repo(folder, repo_id))
