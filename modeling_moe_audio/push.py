"""`moe-audio push DIR REPO_ID`: publish a checkpoint (weights, config, code, processor, card) in one commit."""

import argparse
from pathlib import Path

from huggingface_hub import ModelCard

from .hub import push_checkpoint
from .model_card import build_model_card


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="moe-audio push", description=__doc__)
    parser.add_argument("folder", help="a checkpoint directory (from init, train or demo)")
    parser.add_argument("repo_id", help="the Hub model repository, e.g. you/tiny-moe")
    parser.add_argument("--token", help="a Hub token (default: the one `hf auth login` saved)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", help="an existing branch to commit to (default main)")
    args = parser.parse_args(argv)
    try:
        commit = publish(args.folder, args.repo_id, args.token, args.private, args.revision)
    except ValueError as error:
        raise SystemExit(f"error: {error}")
    print(f"pushed {args.folder} to {args.repo_id}: {commit}")
