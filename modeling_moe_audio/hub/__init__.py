"""The Hugging Face Hub: `publish`, what a model repository receives, in one commit."""
