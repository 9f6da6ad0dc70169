"""`moe-audio train ARGS`, launched by torchrun from test_distributed.py, that also records what only the processes
know: at the end of training, the logits of the model still in memory (sharded under FSDP) on the first two training
rows, which rank 0 saves with that batch to the file named by $IN_MEMORY_LOGITS."""

import os
import sys

import torch
from transformers import TrainerCallback

from modeling_moe_audio.commands import train as train_command
from modeling_moe_audio.training import trainer as train_module


class InMemoryLogits(TrainerCallback):
    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_end(self, args, state, control, model=None, **kwargs):
        batch = self.trainer.data_collator([self.trainer.train_dataset[i] for i in range(2)])
        model.eval()
        with torch.no_grad():  # every rank runs the forward: FSDP gathers each layer's shards from all of them
            logits = model(**batch).logits
        if state.is_world_process_zero:
            torch.save({"batch": dict(batch), "logits": logits}, os.environ["IN_MEMORY_LOGITS"])


def build_with_probe(*args):
    trainer = build_trainer(*args)
    trainer.add_callback(InMemoryLogits(trainer))
    return trainer


build_trainer = train_module.build_trainer
train_module.build_trainer = build_with_probe

if __name__ == "__main__":
    train_command.main(sys.argv[1:])
