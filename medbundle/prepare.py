"""``medbundle prepare``: fill a bundle's disk cache of preprocessed items before training.

Training reads its deterministic preprocessing (decoding, resampling, resizing, windowing) from the disk
cache of :class:`~medbundle.data.DiskCacheDataset`; the first epoch fills it when nothing did before.
This command fills it ahead, in parallel, for the training, validation and (where the bundle has an
``evaluate.json``) test splits, from the bundle's own configs and the same overrides the training command
gets, so training finds every entry (same transforms, same fingerprint) and unreadable files are reported
and recorded before the first epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medbundle.bundle import bundle_dir

__all__ = ["SPLITS", "prepare_bundle"]

logger = logging.getLogger("medbundle.prepare")

#: split name -> (extra config next to train.json, config id of the dataset)
SPLITS: dict[str, tuple[str | None, str]] = {
    "training": (None, "train#dataset"),
    "validation": (None, "validate#dataset"),
    "testing": ("evaluate.json", "validate#dataset"),
}


def _parser(bundle: Path, extra: Sequence[str | Path], overrides: Mapping[str, Any]):
    from monai.bundle import ConfigParser

    files = [bundle / "configs" / "train.json", *[Path(f) for f in extra]]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"config file not found: {f}")
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    for key, value in overrides.items():
        parser[key] = value
    return parser


def prepare_bundle(
    bundle: str | Path,
    overrides: Mapping[str, Any] | None = None,
    config_files: Sequence[str | Path] = (),
    splits: Sequence[str] = ("training", "validation", "testing"),
    num_workers: int | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Prepare the cache entries of a bundle's splits.

    Args:
        bundle: bundle name (folder under ``bundles/``) or a bundle folder.
        overrides: config values as the training command would get them (``dataset_dir``, ``bundle_root``,
            ``image_size``, ...).
        config_files: configs layered after ``train.json`` (e.g. the bundle's ``demo.json``), as in ``--config_file
            "[train.json, ...]"``.
        splits: which of ``training``, ``validation``, ``testing`` to prepare (``testing`` only where the bundle has an
            ``evaluate.json`` and the datalist has a test split).
        num_workers: threads preparing items (default: the config's ``num_workers``).
        progress: show progress.

    Returns:
        One report per split (see :meth:`~medbundle.data.DiskCacheDataset.prepare`), with ``split`` added.

    A dataset without a ``cache_dir`` (the slide classifier: its tissue-grid transform keeps its own disk
    cache of coordinates) still runs every item through its cached transforms, which fills their own caches
    and finds the unreadable items.

    Raises:
        ValueError: an unknown split, or a dataset that is not a :class:`~medbundle.data.DiskCacheDataset`.
    """
    path = Path(bundle) if Path(bundle).is_dir() else bundle_dir(str(bundle))
    overrides = dict(overrides or {})
    reports = []
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
        extra_name, dataset_id = SPLITS[split]
        extra = list(config_files)
        if extra_name is not None:
            extra_path = path / "configs" / extra_name
            if not extra_path.is_file():
                continue
            extra = [extra_path, *extra]
        parser = _parser(path, extra, overrides)
        data_id = f"{dataset_id}#data"
        if not parser.get_parsed_content(data_id):
            logger.info("%s: no %s items; nothing to prepare", path.name, split)
            continue
        target = str(parser.get(f"{dataset_id}#_target_", ""))
        if not target.endswith("DiskCacheDataset"):
            raise ValueError(f"{path.name}: {dataset_id} is a {target or '?'}, not a DiskCacheDataset; "
                             "nothing to prepare")
        parser[f"{dataset_id}#precheck"] = False  # prepare() below does the work, with its report
        dataset = parser.get_parsed_content(dataset_id)
        report = dataset.prepare(num_workers=num_workers, progress=progress)
        reports.append({"split": split, **report})
    return reports
