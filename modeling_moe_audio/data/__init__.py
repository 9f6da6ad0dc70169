"""Data for training, evaluation and the analyses.

- `manifest`: JSONL manifests read and validated into a `datasets.Dataset` (`load_manifest`, `load_rows`).
- `sources`: training data from datasets saved to disk, parquet files and folders, Hub ids, streamed or whole
  (`load_training_data`), checked with the manifests' row check.
- `conversation`: a row's conversation in normal form and the decoded chat the processor takes.
- `audio`: audio files checked on disk, audio items decoded to 16 kHz mono float32.
- `semantic_ids`: each clip's ids of the second (semantic) stream, read from a row (inline or `.npy`) and checked.
- `collator`: `MoEAudioDataCollator`, the training batches.
- `corpus`: the built-in synthetic corpus (numpy only: it imports neither torch nor transformers).
"""
