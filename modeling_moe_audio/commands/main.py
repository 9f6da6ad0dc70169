"""moe-audio: build, train, evaluate, look inside and publish audio language models with the MoE adapter of Lei et
al. ("MoE Adapter for Large Audio Language Models"), on Hugging Face Transformers.

Every command has its own options: `moe-audio COMMAND --help`.
"""

import argparse
import importlib
import sys


# name: (module under modeling_moe_audio.commands, what it does). Each module only parses its arguments and calls
# the library; none imports another.
COMMANDS = {
    "init": ("init", "write a freshly initialised model (random, or from a pretrained LLM and Whisper) as a checkpoint"),
    "params": ("params", "print the parameter counts of a configuration as JSON"),
    "train": ("train", "fine-tune a checkpoint with the Trainer on JSONL manifests (all TrainingArguments flags)"),
    "evaluate": ("evaluate", "multiple-choice audio QA (MMAU, VoiceBench) by greedy generation, with the modality gap"),
    "analyze": ("analyze", "expert heatmap and gradient conflicts between categories (paper section 5)"),
    "app": ("app", "a local web page: ask about a clip, stream the answer, see which experts each audio token used"),
    "demo": ("demo", "train and compare the tiny MoE and dense models on the built-in corpus"),
    "compare": ("compare", "train configurations (MoE, dense, ablations) over several seeds: mean, spread, 95%% intervals"),
    "ablate": ("ablate", "train the Table 2/3 ablations at tiny scale on the built-in corpus"),
    "upcycle": ("upcycle", "turn a dense-adapter checkpoint into an MoE-adapter one"),
    "semantic-fit": ("semantic_fit", "give a checkpoint a semantic stream: k-means codebook on one encoder layer"),
    "push": ("push", "publish a checkpoint to the Hub in one commit, with code and card"),
    "update-code": ("update_code", "replace an old checkpoint's code files with the installed ones, checking the logits"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moe-audio", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        module = importlib.import_module(f"{__package__}.{COMMANDS[argv[0]][0]}")
        module.main(argv[1:])
        return
    build_parser().parse_args(argv)  # --help, or an error naming the commands


if __name__ == "__main__":
    main()
