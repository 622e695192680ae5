"""Carry a reader's meta data into plain item fields, for the writers that name each item's result."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["MetaToFieldd"]


class MetaToFieldd(MapTransform):
    """Copy one meta value of an image into a plain field of the item.

    ``EnsureTyped(track_meta=False)`` drops an image's meta data before the network; a value the writers must show
    (the reader's note that a colour capture was converted to luminance, ``meta["colour_converted"]``) is kept by
    copying it into a string field of the item first, which collates as a list of strings and reaches the writer
    through ``engine.state.batch``.

    Args:
        keys: the image key(s) whose meta data is read (the first present with the meta key wins).
        meta_key: the meta data entry, e.g. ``"colour_converted"``.
        field: the item field written, e.g. ``"note"``.
        default: the field's value when no image has ``meta_key`` (a string, so that batches collate).
        allow_missing_keys: as MONAI's ``MapTransform``.
    """

    def __init__(
        self, keys: KeysCollection, meta_key: str, field: str, default: str = "", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.meta_key, self.field, self.default = meta_key, field, default

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        value = self.default
        for key in self.key_iterator(d):
            meta = getattr(d[key], "meta", None)
            if isinstance(meta, Mapping) and meta.get(self.meta_key) not in (None, ""):
                value = str(meta[self.meta_key])
                break
        d[self.field] = value
        return d
