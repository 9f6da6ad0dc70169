"""Training data where users hold it: `load_training_data(source, ...)` -> (dataset, report).

`source` is one of:

- a JSONL manifest (or a JSON list): `load_manifest`;
- a `datasets.Dataset` or `DatasetDict` saved with `save_to_disk` (a folder with `state.json` or
  `dataset_dict.json`);
- a parquet file, or a folder of data files or a dataset repository (parquet, ...: what `datasets.load_dataset`
  reads from a folder; split names from the file names, `train-*.parquet`, `data/validation-*.parquet`, ...);
- a dataset id of the Hub (`org/name`). Offline (`HF_HUB_OFFLINE=1`), the id is looked up in the local Hub cache
  (filled by `hf download --repo-type dataset org/name`) and read from there.

Rows hold the manifest's keys, under column names of the user's choice (`DataColumns`): `audio` (one clip, or a
list of clips, per row: a `datasets.Audio` column, read as `{"path", "bytes"}` without decoding, so torchcodec is
never needed, or paths, relative to the data's folder), `prompt`, `response`, or `conversation` (as in a manifest).
Other columns are kept. Every row goes through the manifest's own check (`checked_row`): a whole dataset is checked
before training, a bad row named by its index (0-based, as `dataset[i]` finds it); a streamed one (`streaming=True`,
an `IterableDataset` that is never loaded whole) is checked row by row as it streams.
"""

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch

from ..local_paths import looks_like_a_local_path, missing_path_error
from .audio import BadRowError
from .manifest import ROW_KEYS, ManifestReport, bad_row_error, checked_row, load_manifest
from .semantic_ids import SEMANTIC_IDS, SemanticIdsRule, check_all_or_none


logger = logging.getLogger(__name__)

SAVED_DATASET_FILES = ("state.json", "dataset_dict.json")  # what `save_to_disk` writes at a dataset's top
# A missing path with one of these endings is a mistyped file, not a Hub id (which would cost minutes of retries).
DATA_FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".arrow", ".csv")


@dataclass(frozen=True)
class DataColumns:
    """The columns that hold a row's audio, prompt, response and conversation (the manifest's keys by default)."""

    audio: str = "audio"
    prompt: str = "prompt"
    response: str = "response"
    conversation: str = "conversation"

    def row(self, values: dict) -> dict:
        """A dataset row with the manifest's keys: the mapped columns renamed, a null conversation left out (the row
        then uses audio, prompt, response), and other columns kept, except ones that merely share a manifest key's
        name (an `audio` column when `--audio_column` names another)."""
        ours = {getattr(self, key): key for key in ROW_KEYS}
        row = {}
        for column, value in values.items():
            if column in ours:
                row[ours[column]] = value
            elif column not in ROW_KEYS:
                row[column] = value
        if row.get("conversation") is None:
            row.pop("conversation", None)
        return row

    def check_present(self, column_names: list[str] | None, name: str) -> None:
        """Refuse a dataset whose columns cannot make rows, before reading any row."""
        if column_names is None:  # a stream whose columns are not known until it is read
            return
        if self.conversation in column_names:
            return
        missing = [column for column in (self.audio, self.prompt, self.response) if column not in column_names]
        if missing:
            raise ValueError(
                f"{name} has neither a {self.conversation!r} column nor all of {self.audio!r}, {self.prompt!r}, "
                f"{self.response!r} (missing {missing}; its columns: {column_names}). Name yours with --audio_column, "
                "--prompt_column, --response_column or --conversation_column."
            )


class CheckedRows(torch.utils.data.Dataset):
    """The rows of a `datasets.Dataset` that passed the check, each read on access from the Arrow table (memory-
    mapped: nothing is loaded whole, no audio decoded, nothing written next to the user's dataset) and put in
    normal form for `MoEAudioDataCollator`."""

    def __init__(self, dataset: datasets.Dataset, indices: np.ndarray, columns: DataColumns, folder: Path | None):
        self.rows = dataset.with_format("arrow")  # raw Arrow values: a `datasets.Audio` item stays {"path", "bytes"}
        self.indices, self.columns, self.folder = indices, columns, folder

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        row = self.rows[int(self.indices[index])].to_pylist()[0]
        return checked_row(self.columns.row(row), self.folder, check_audio=False)  # its audio was checked up front


def load_training_data(
    source: str | os.PathLike,
    columns: DataColumns = DataColumns(),
    split: str | None = None,
    default_split: str = "train",
    streaming: bool = False,
    max_audio_seconds: float = 600.0,
    skip_bad_rows: bool = False,
    split_flag: str = "--split",
    semantic: SemanticIdsRule = SemanticIdsRule(),
) -> tuple[torch.utils.data.Dataset | datasets.IterableDataset, ManifestReport]:
    """The rows of `source` (see the module docstring) in normal form, checked, and what the check left out.

    `split`: the split of a dataset dict, a folder or a Hub dataset (none given: the only one there is, else
    `default_split`; `split_flag` is the option a user sets it with, for the error naming the splits). Whole
    (`streaming=False`): every row is checked now, and a bad row raises `BadRowError` with its index and the reason,
    or is left out and listed in the report (`skip_bad_rows`). Streamed: a `datasets.IterableDataset` whose rows are
    checked as they are read; a bad row stops the iteration the same way, or is left out, logged and counted in the
    report as the stream reaches it. `semantic`: how rows' semantic ids are checked (what the model takes, when known).
    """
    name = os.fspath(source)
    path = Path(name).expanduser()
    if path.is_file() and path.suffix != ".parquet":
        dataset, report = load_manifest(path, max_audio_seconds, skip_bad_rows, semantic)
        return (dataset.to_iterable_dataset() if streaming else dataset), report
    dataset, folder = _open(name, path, split, default_split, streaming, split_flag, "Training data")
    columns.check_present(dataset.column_names, name)
    if streaming:
        return _checked_stream(dataset, name, columns, folder, max_audio_seconds, skip_bad_rows, semantic)
    return _checked_whole(dataset, name, columns, folder, max_audio_seconds, skip_bad_rows, semantic)


def dataset_rows(source: str | os.PathLike, split: str | None = None, default_split: str = "train",
                 split_flag: str = "--split", what: str = "Data"):
    """(an iterator of (`"row N"`, the row as stored: `datasets.Audio` items as `{"path", "bytes"}`, never decoded),
    the folder relative audio paths are in) for a dataset source other than a manifest (see the module docstring);
    rows are read in small batches from the Arrow files, as they are needed. `what` names the data in errors."""
    name = os.fspath(source)
    dataset, folder = _open(name, Path(name).expanduser(), split, default_split, False, split_flag, what)
    return _rows_of(dataset), folder


def _rows_of(dataset: datasets.Dataset):
    index = 0
    for batch in dataset.with_format("arrow").iter(batch_size=64):
        for values in batch.to_pylist():
            yield f"row {index}", values
            index += 1


def _open(name: str, path: Path, split, default_split, streaming, split_flag, what):
    """(the chosen split as a `Dataset` or, streaming, an `IterableDataset`; the folder relative audio paths are in)."""
    if path.is_file():  # a parquet file
        loaded, folder = datasets.load_dataset("parquet", data_files=str(path), streaming=streaming), path.parent
    elif path.is_dir():
        if any((path / file).is_file() for file in SAVED_DATASET_FILES):
            loaded = datasets.load_from_disk(str(path))  # memory-mapped, whole or streamed alike
        else:
            loaded = datasets.load_dataset(str(path), streaming=streaming)
        folder = path
    elif looks_like_a_local_path(name) or path.suffix.lower() in DATA_FILE_SUFFIXES:
        raise missing_path_error(path, what)
    else:
        loaded, folder = _hub_dataset(name, streaming)
    dataset = _split(loaded, split, default_split, name, split_flag)
    if streaming and isinstance(dataset, datasets.Dataset):
        dataset = dataset.to_iterable_dataset()
    return dataset, folder


def _hub_dataset(repo_id: str, streaming: bool):
    """A Hub dataset: offline, the snapshot in the local Hub cache, read as a local dataset repository; online,
    `load_dataset(repo_id)`."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    if constants.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE:
        try:
            folder = Path(snapshot_download(repo_id, repo_type="dataset", local_files_only=True))
        except LocalEntryNotFoundError:
            raise FileNotFoundError(
                f"Dataset {repo_id!r} is neither a local path nor in the local Hub cache ({constants.HF_HUB_CACHE}), "
                f"and the Hub is offline (HF_HUB_OFFLINE): download it first (`hf download --repo-type dataset "
                f"{repo_id}`), or give a folder or file."
            ) from None
        return datasets.load_dataset(str(folder), streaming=streaming), folder
    try:
        return datasets.load_dataset(repo_id, streaming=streaming), None
    except datasets.exceptions.DatasetNotFoundError as error:
        raise FileNotFoundError(f"{repo_id!r} is neither a local path nor a dataset on the Hub ({error}).") from None


def _split(loaded, split: str | None, default_split: str, name: str, split_flag: str):
    if not isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        return loaded
    names = list(loaded)
    chosen = split or (names[0] if len(names) == 1 else default_split)
    if chosen not in loaded:
        raise ValueError(f"{name} has no split {chosen!r} (its splits: {', '.join(names)}); choose one with "
                         f"{split_flag}.")
    return loaded[chosen]


def _checked_whole(dataset: datasets.Dataset, name, columns, folder, max_audio_seconds, skip_bad_rows, semantic):
    report, kept, has_ids = ManifestReport(), [], []
    for index, (label, values) in enumerate(_rows_of(dataset)):
        try:
            has_ids.append(SEMANTIC_IDS in checked_row(columns.row(values), folder, max_audio_seconds,
                                                       semantic=semantic))
            kept.append(index)
        except BadRowError as error:
            if not skip_bad_rows:
                raise bad_row_error(f"{name}, {label}", error) from None
            report.skipped.append(f"{name}, {label}: {error}")
    if not kept:
        raise ValueError(f"Training data {name} has no usable rows ({len(report.skipped)} left out).")
    check_all_or_none(has_ids, f"Training data {name}")
    report.kept = len(kept)
    return CheckedRows(dataset, np.asarray(kept, dtype=np.int64), columns, folder), report


BAD_ROW = "_bad_row"  # the column that marks a streamed row the check left out, until the filter drops it


def _checked_stream(stream: datasets.IterableDataset, name, columns, folder, max_audio_seconds, skip_bad_rows,
                    semantic):
    report = ManifestReport()

    def check(values: dict, index: int) -> dict:
        try:
            row = checked_row(columns.row(values), folder, max_audio_seconds, semantic=semantic)
        except BadRowError as error:
            if not skip_bad_rows:
                raise bad_row_error(f"{name}, row {index}", error) from None
            report.skipped.append(f"{name}, row {index}: {error}")
            logger.warning("left out %s, row %d (%d so far, --skip_bad_rows): %s", name, index, len(report.skipped),
                           error)
            return {BAD_ROW: True}
        report.kept += 1
        return {**row, BAD_ROW: False}

    stream = stream.decode(False)  # `datasets.Audio` items as {"path", "bytes"}: the collator decodes them
    checked = stream.map(check, with_indices=True, remove_columns=stream.column_names)
    return checked.filter(lambda row: not row[BAD_ROW]).remove_columns(BAD_ROW), report
