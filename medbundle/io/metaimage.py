"""MetaImage (``.mhd`` + ``.raw``, ``.mha``) writing and reading with numpy only, and a MONAI reader for it.

LUNA16 ships its CT scans as MetaImage. MONAI reads that format only through ``ITKReader``, which needs
``itk``; this module needs nothing beyond numpy (and MONAI for the reader class).

Conventions:

- Arrays are indexed ``(x, y, z)`` (``array_xyz[i, j, k]``): the first index runs fastest in the ``.raw``
  file, as MetaImage stores it.
- World coordinates are millimetres in the ITK/DICOM **LPS** frame (+x towards the patient's left, +y
  posterior, +z superior). ``Offset`` is the world position of the centre of voxel ``(0, 0, 0)``.
- ``direction`` is ITK's direction matrix ``D`` (3 x 3): column ``a`` is the unit vector of array axis
  ``a`` in LPS, so the LPS world point of voxel ``(i, j, k)`` is ``origin + D @ (spacing * (i, j, k))``.
  The header's ``TransformMatrix`` lists the direction cosines axis by axis, i.e. the columns of ``D``
  one after the other (ITK's ``MetaImageIO`` reads it that way); LUNA16 scans have ``D`` = identity.

:class:`MetaImageReader` mirrors MONAI's ``ITKReader`` (default arguments) for these files: same array
(``(x, y, z)``, native dtype), and the same affine. ``ITKReader._get_affine`` builds the LPS affine
``[[D @ diag(spacing), origin], [0, 0, 0, 1]]`` and, with ``affine_lps_to_ras=True`` (the default), turns
it into RAS with ``monai.data.utils.orientation_ras_lps``, i.e. ``diag(-1, -1, 1, 1) @ affine_lps`` (the
first two rows negated). So for a LUNA16 scan the RAS affine is
``[[-sx, 0, 0, -ox], [0, -sy, 0, -oy], [0, 0, sz, oz], [0, 0, 0, 1]]``: voxel ``(i, j, k)`` maps to the RAS
point ``(-x, -y, z)`` of its LPS point ``(x, y, z) = origin + spacing * (i, j, k)``.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader
from monai.data.image_reader import _copy_compatible_dict, _stack_images
from monai.data.utils import is_supported_format, orientation_ras_lps
from monai.utils import ensure_tuple

from medbundle.io.ct_series import CTImageReader

__all__ = [
    "MET_TYPES",
    "write_mhd",
    "read_mhd",
    "read_mhd_header",
    "MetaImage",
    "MetaImageReader",
    "CTMetaImageReader",
    "luna16_readers",
    "volume_readers",
]

#: MetaImage ``ElementType`` -> numpy dtype (little endian; byte order comes from the header).
MET_TYPES: dict[str, str] = {
    "MET_CHAR": "i1",
    "MET_UCHAR": "u1",
    "MET_SHORT": "<i2",
    "MET_USHORT": "<u2",
    "MET_INT": "<i4",
    "MET_UINT": "<u4",
    "MET_LONG": "<i4",
    "MET_ULONG": "<u4",
    "MET_LONG_LONG": "<i8",
    "MET_ULONG_LONG": "<u8",
    "MET_FLOAT": "<f4",
    "MET_DOUBLE": "<f8",
}
_DTYPE_TO_MET: dict[str, str] = {
    "int8": "MET_CHAR",
    "uint8": "MET_UCHAR",
    "int16": "MET_SHORT",
    "uint16": "MET_USHORT",
    "int32": "MET_INT",
    "uint32": "MET_UINT",
    "int64": "MET_LONG_LONG",
    "uint64": "MET_ULONG_LONG",
    "float32": "MET_FLOAT",
    "float64": "MET_DOUBLE",
}
_SUFFIXES = ("mhd", "mha")
# header keys that name the same thing (MetaIO accepts all of them)
_ORIGIN_KEYS = ("Offset", "Origin", "Position")
_DIRECTION_KEYS = ("TransformMatrix", "Rotation", "Orientation")
_MSB_KEYS = ("BinaryDataByteOrderMSB", "ElementByteOrderMSB")


def _fmt(value: float) -> str:
    """Shortest text that reads back as the same float64 (``-195``, ``0.7``)."""
    return np.format_float_positional(float(value), trim="-")


# ----------------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------------
def write_mhd(
    path_mhd: str | os.PathLike,
    array_xyz: np.ndarray,
    spacing_xyz: Sequence[float],
    origin_xyz_lps: Sequence[float],
    direction: np.ndarray | Sequence[Sequence[float]] | None = None,
) -> Path:
    """Write a 3D volume as MetaImage: a text header ``<name>.mhd`` and the voxels in ``<name>.raw``.

    Args:
        path_mhd: Header path; must end with ``.mhd``. The data file is the same name with ``.raw`` (a LUNA16 series UID
            such as ``1.3.6.1...860.mhd`` gives ``1.3.6.1...860.raw``). Parent folders are created.
        array_xyz: Voxels, shape ``(X, Y, Z)`` (index ``[i, j, k]``); written little endian with x fastest. int16 (HU)
            gives ``MET_SHORT`` as in LUNA16; other integer and float dtypes get their MetaImage type, bool is written
            as uint8.
        spacing_xyz: Voxel size in mm along the three array axes (``ElementSpacing``), all > 0.
        origin_xyz_lps: LPS world position (mm) of the centre of voxel ``(0, 0, 0)`` (``Offset``).
        direction: ITK direction matrix ``D`` (3 x 3, columns = axis directions in LPS); identity when None. Written as
            ``TransformMatrix`` column by column (see the module docstring).

    Returns:
        Path of the ``.mhd`` header.

    Raises:
        ValueError: Naming the file: not a ``.mhd`` name, array not 3D, spacing not 3 positive values, origin not 3
            finite values, direction not 3 x 3, or an unsupported dtype.
    """
    path_mhd = Path(path_mhd)
    if path_mhd.suffix.lower() != ".mhd":
        raise ValueError(f"{path_mhd}: write_mhd writes a .mhd header (+ .raw data); give a name ending in .mhd.")
    arr = np.asarray(array_xyz)
    if arr.ndim != 3:
        raise ValueError(f"{path_mhd}: expected a 3D array (X, Y, Z), got shape {arr.shape}.")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    met = _DTYPE_TO_MET.get(arr.dtype.name)
    if met is None:
        raise ValueError(
            f"{path_mhd}: dtype {arr.dtype} has no MetaImage element type; use one of {list(_DTYPE_TO_MET)}."
        )
    sp = np.asarray(spacing_xyz, dtype=np.float64).reshape(-1)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"{path_mhd}: spacing must be 3 positive values in mm (x, y, z), got {list(spacing_xyz)}.")
    org = np.asarray(origin_xyz_lps, dtype=np.float64).reshape(-1)
    if org.shape != (3,) or not np.all(np.isfinite(org)):
        raise ValueError(f"{path_mhd}: origin must be 3 finite LPS coordinates in mm, got {list(origin_xyz_lps)}.")
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    if d.shape != (3, 3) or not np.all(np.isfinite(d)):
        raise ValueError(f"{path_mhd}: direction must be a 3 x 3 matrix, got shape {d.shape}.")

    raw_name = path_mhd.with_suffix(".raw").name
    lines = [
        ("ObjectType", "Image"),
        ("NDims", "3"),
        ("BinaryData", "True"),
        ("BinaryDataByteOrderMSB", "False"),
        ("CompressedData", "False"),
        ("TransformMatrix", " ".join(_fmt(v) for v in d.T.reshape(-1))),  # column a = direction of axis a
        ("Offset", " ".join(_fmt(v) for v in org)),
        ("CenterOfRotation", "0 0 0"),
        ("AnatomicalOrientation", "RAI"),
        ("ElementSpacing", " ".join(_fmt(v) for v in sp)),
        ("DimSize", " ".join(str(int(n)) for n in arr.shape)),
        ("ElementType", met),
        ("ElementDataFile", raw_name),
    ]
    path_mhd.parent.mkdir(parents=True, exist_ok=True)
    path_mhd.write_text("".join(f"{k} = {v}\n" for k, v in lines), encoding="ascii")
    le = np.dtype(MET_TYPES[met])
    # x fastest: the C-order bytes of the transposed (z, y, x) array
    (path_mhd.parent / raw_name).write_bytes(np.ascontiguousarray(arr.T, dtype=le).tobytes())
    return path_mhd


# ----------------------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------------------
def _field(fields: dict[str, str], keys: Sequence[str]) -> str | None:
    lower = {k.lower(): v for k, v in fields.items()}
    for k in keys:
        if k.lower() in lower:
            return lower[k.lower()]
    return None


def _numbers(path: Path, name: str, text: str, n: int | None = None) -> np.ndarray:
    try:
        values = np.array([float(t) for t in text.split()], dtype=np.float64)
    except ValueError:
        raise ValueError(f"{path}: {name} = {text!r} is not a list of numbers.") from None
    if n is not None and values.size != n:
        raise ValueError(f"{path}: {name} has {values.size} value(s) but NDims asks for {n}.")
    return values


def _is_true(text: str | None) -> bool:
    return text is not None and text.strip().lower() in ("true", "1", "yes")


def read_mhd_header(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a MetaImage header (``.mhd``, or the text part of a ``.mha``).

    Returns:
        dict with: ``fields`` (every ``Key = Value`` line as strings, in file order), ``ndim`` (int), ``dim_size``
            (tuple of ints, ``(X, Y, Z)``), ``spacing`` (float64 ``(ndim,)`` mm), ``origin`` (float64 ``(ndim,)``, LPS
            mm), ``direction`` (float64 ``(ndim, ndim)``, ITK direction matrix, columns = axes), ``dtype`` (numpy dtype
            with the file's byte order), ``element_type`` (str), ``n_channels`` (int), ``compressed`` (bool),
            ``data_file`` (Path, or None for ``LOCAL``), ``data_offset`` (bytes to skip in the data file; for ``LOCAL``
            the header length; -1 = data at the end of the file), ``filename`` (str).

    Raises:
        ValueError: Naming the file: not a MetaImage header, missing ``NDims``/``DimSize``/``ElementType``/
            ``ElementDataFile``, inconsistent sizes, unknown element type, or a multi-file data list.
    """
    path = Path(path)
    fields: dict[str, str] = {}
    pos = 0
    try:
        with open(path, "rb") as fh:
            for _ in range(10000):  # a header has a few dozen lines; stop on garbage
                raw = fh.readline(65536)
                if not raw:
                    break
                line = raw.decode("latin-1").strip()
                if not line:
                    continue
                if "=" not in line:
                    raise ValueError(
                        f"{path}: header line {line[:60]!r} is not 'Key = Value'; is this a MetaImage file?"
                    )
                key, value = (s.strip() for s in line.split("=", 1))
                fields[key] = value
                if key.lower() == "elementdatafile":  # always the last field; data may follow (LOCAL)
                    pos = fh.tell()
                    break
    except OSError as err:
        raise OSError(f"cannot open MetaImage header {path}: {err.strerror or err}") from err
    if not fields or _field(fields, ("ObjectType", "NDims")) is None:
        raise ValueError(f"{path}: no MetaImage header found (expected 'ObjectType = Image', 'NDims = 3', ...).")
    obj = _field(fields, ("ObjectType",))
    if obj is not None and obj.lower() != "image":
        raise ValueError(f"{path}: ObjectType is {obj!r}; only 'Image' is supported.")
    for required in ("NDims", "DimSize", "ElementType", "ElementDataFile"):
        if _field(fields, (required,)) is None:
            raise ValueError(f"{path}: MetaImage header has no {required} field.")
    try:
        ndim = int(_field(fields, ("NDims",)) or "")
    except ValueError:
        raise ValueError(f"{path}: NDims = {_field(fields, ('NDims',))!r} is not an integer.") from None
    if ndim < 1:
        raise ValueError(f"{path}: NDims must be >= 1, got {ndim}.")
    dims = _numbers(path, "DimSize", _field(fields, ("DimSize",)) or "", ndim)
    if np.any(dims < 1) or np.any(dims != np.round(dims)):
        raise ValueError(f"{path}: DimSize must be positive integers, got {dims.tolist()}.")
    spacing_text = _field(fields, ("ElementSpacing", "ElementSize"))
    spacing = np.ones(ndim) if spacing_text is None else _numbers(path, "ElementSpacing", spacing_text, ndim)
    origin_text = _field(fields, _ORIGIN_KEYS)
    origin = np.zeros(ndim) if origin_text is None else _numbers(path, "Offset", origin_text, ndim)
    dir_text = _field(fields, _DIRECTION_KEYS)
    if dir_text is None:
        direction = np.eye(ndim)
    else:
        direction = _numbers(path, "TransformMatrix", dir_text, ndim * ndim).reshape(ndim, ndim).T
    etype = (_field(fields, ("ElementType",)) or "").upper()
    if etype not in MET_TYPES:
        raise ValueError(f"{path}: ElementType {etype!r} is not supported; supported: {sorted(MET_TYPES)}.")
    dtype = np.dtype(MET_TYPES[etype])
    if _is_true(_field(fields, _MSB_KEYS)) and dtype.itemsize > 1:
        dtype = dtype.newbyteorder(">")
    n_channels = int(float(_field(fields, ("ElementNumberOfChannels",)) or 1))
    data_name = _field(fields, ("ElementDataFile",)) or ""
    if data_name.upper().startswith("LIST") or "%" in data_name or len(data_name.split()) > 1:
        raise ValueError(f"{path}: ElementDataFile = {data_name!r} (one file per slice) is not supported.")
    header_size = int(float(_field(fields, ("HeaderSize",)) or 0))
    if data_name.upper() == "LOCAL":
        data_file, offset = None, pos
    else:
        data_file = Path(data_name) if Path(data_name).is_absolute() else path.parent / data_name
        offset = header_size
    return {
        "fields": fields,
        "ndim": ndim,
        "dim_size": tuple(int(v) for v in dims),
        "spacing": spacing,
        "origin": origin,
        "direction": direction,
        "dtype": dtype,
        "element_type": etype,
        "n_channels": n_channels,
        "compressed": _is_true(_field(fields, ("CompressedData",))),
        "data_file": data_file,
        "data_offset": offset,
        "filename": str(path),
    }


def read_mhd(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a MetaImage file (``.mhd`` + data file, or ``.mha``) with numpy.

    Args:
        path: The ``.mhd`` (or ``.mha``) header.

    Returns:
        (array_xyz, header): ``array_xyz``: shape ``DimSize`` = ``(X, Y, Z)`` (``(X, Y, Z, C)`` for multi-channel
            elements), in native byte order and the file's element type (int16 HU for LUNA16), writable; a transposed
            view of the file order (x fastest). ``header``: see :func:`read_mhd_header` (``spacing`` mm, ``origin`` LPS
            mm, ``direction`` ITK direction matrix).

    Raises:
        ValueError: Naming the file: a bad header (see :func:`read_mhd_header`), a missing data file, or a data size
            that does not match ``DimSize`` x element size.
    """
    header = read_mhd_header(path)
    src = Path(path) if header["data_file"] is None else Path(header["data_file"])
    try:
        blob = src.read_bytes()
    except OSError as err:
        raise ValueError(f"{path}: cannot read its data file {src}: {err.strerror or err}") from err
    dims, dtype, nc = header["dim_size"], header["dtype"], header["n_channels"]
    n_bytes = int(np.prod(dims)) * nc * dtype.itemsize
    offset = header["data_offset"]
    if header["compressed"]:
        try:
            data = zlib.decompress(blob[offset:] if offset >= 0 else blob)
        except zlib.error as err:
            raise ValueError(f"{path}: CompressedData = True but {src} does not decompress: {err}") from err
    elif offset < 0:  # HeaderSize = -1: the data are the last bytes of the file
        data = blob[len(blob) - n_bytes :] if len(blob) >= n_bytes else blob
    else:
        data = blob[offset:]
    if len(data) != n_bytes:
        raise ValueError(
            f"{path}: data file {src} holds {len(data)} bytes of voxels but DimSize {list(dims)} x "
            f"{nc} channel(s) x {dtype.itemsize} bytes ({header['element_type']}) needs {n_bytes}; "
            "the file is truncated or the header is wrong."
        )
    flat = np.frombuffer(bytearray(data), dtype=dtype)  # bytearray: writable
    if not dtype.isnative:
        flat = flat.astype(dtype.newbyteorder("="))
    file_shape = tuple(reversed(dims)) + ((nc,) if nc > 1 else ())
    arr = flat.reshape(file_shape)
    arr = arr.T if nc == 1 else np.moveaxis(arr.T, 0, -1)  # (X, Y, Z) [, C]
    return arr, header


# ----------------------------------------------------------------------------------------------------------
# MONAI reader
# ----------------------------------------------------------------------------------------------------------
@dataclass
class MetaImage:
    """One MetaImage read by :class:`MetaImageReader`: the array ``(X, Y, Z)`` and its parsed header."""

    array: np.ndarray
    header: dict[str, Any] = field(repr=False)


class MetaImageReader(ImageReader):
    """MONAI ``ImageReader`` for MetaImage (``.mhd``/``.mha``) without ITK; a drop-in for ``ITKReader``.

    Use as ``LoadImaged(keys="image", reader=MetaImageReader())``. Output mirrors ``ITKReader`` with the
    same arguments:

    - array: ``(X, Y, Z)`` in the file's element type (int16 HU for LUNA16; ``LoadImage`` casts to its
      ``dtype``); ``(Z, Y, X)`` with ``reverse_indexing=True`` (the metadata is unchanged, as in ITK);
    - ``meta["original_affine"]`` = ``meta["affine"]``: ``[[D @ diag(spacing), origin], [0, 0, 0, 1]]`` in
      LPS, converted to RAS (first two rows negated, ``orientation_ras_lps``) when ``affine_lps_to_ras``;
      ``meta["space"]`` is ``"RAS"`` or ``"LPS"`` accordingly;
    - ``meta["spatial_shape"]`` = ``DimSize``; ``meta["spacing"]`` = ``ElementSpacing`` (mm);
      ``meta["original_channel_dim"]`` = NaN (no channel) or -1 (multi-channel elements) unless
      ``channel_dim`` is given; ``meta["filename_or_obj"]`` = the header path;
    - several files are stacked on a new first (channel) axis, as MONAI readers do.

    Args:
        channel_dim: As ``ITKReader``: None (derive), ``"no_channel"`` or an int.
        reverse_indexing: Return ``(Z, Y, X)`` arrays (ITK/numpy order) instead of ``(X, Y, Z)``.
        affine_lps_to_ras: Give the affine in RAS (MONAI's convention, as ``NibabelReader``); False keeps ITK's LPS.
    """

    def __init__(
        self,
        channel_dim: str | int | None = None,
        reverse_indexing: bool = False,
        affine_lps_to_ras: bool = True,
    ) -> None:
        super().__init__()
        self.channel_dim = float("nan") if channel_dim == "no_channel" else channel_dim
        self.reverse_indexing = reverse_indexing
        self.affine_lps_to_ras = affine_lps_to_ras

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        """True when every name ends in ``.mhd`` or ``.mha``."""
        return is_supported_format(filename, _SUFFIXES)

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> Any:
        """Read one file (returns one image object) or several (a list)."""
        names = ensure_tuple(data)
        images = [MetaImage(*read_mhd(n)) for n in names]
        return images if len(names) > 1 else images[0]

    @staticmethod
    def affine(header: dict[str, Any], lps_to_ras: bool = True) -> np.ndarray:
        """The 4 x 4 voxel-to-world affine of a parsed header, built as ``ITKReader._get_affine``."""
        direction, spacing, origin = header["direction"], header["spacing"], header["origin"]
        sr = min(max(direction.shape[0], 1), 3)
        aff = np.eye(sr + 1)
        aff[:sr, :sr] = direction[:sr, :sr] @ np.diag(spacing[:sr])
        aff[:sr, -1] = origin[:sr]
        return orientation_ras_lps(aff) if lps_to_ras else aff

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """``(array, meta)`` of the image(s) returned by :meth:`read`; see the class docstring."""
        arrays: list[np.ndarray] = []
        compatible: dict = {}
        for im in ensure_tuple(img):
            hdr = im.header
            data = im.array
            if self.reverse_indexing:
                data = data.T if data.ndim == hdr["ndim"] else np.moveaxis(data, -1, 0).T
            arrays.append(data)
            meta: dict[str, Any] = {"spacing": np.asarray(hdr["spacing"], dtype=np.float64)}
            meta["original_affine"] = self.affine(hdr, self.affine_lps_to_ras)
            meta["space"] = "RAS" if self.affine_lps_to_ras else "LPS"
            meta["affine"] = meta["original_affine"].copy()
            meta["spatial_shape"] = np.asarray(hdr["dim_size"][:3])
            if self.channel_dim is None:
                meta["original_channel_dim"] = float("nan") if data.ndim == len(meta["spatial_shape"]) else -1
            else:
                meta["original_channel_dim"] = self.channel_dim
            meta["filename_or_obj"] = hdr["filename"]
            _copy_compatible_dict(meta, compatible)
        return _stack_images(arrays, compatible), compatible


class CTMetaImageReader(ImageReader):
    """One reader for CT datalists mixing MetaImage, NIfTI and DICOM (files or series folders).

    ``.mhd``/``.mha`` go to :class:`MetaImageReader`, everything else to
    :class:`medbundle.io.ct_series.CTImageReader` (NIfTI via nibabel, DICOM series in position order).
    All give ``(X, Y, Z)`` arrays with RAS affines, so ``Orientationd(axcodes="RAS")`` brings any of them
    to the same array for the same physical scan.

    Args:
        meta_kwargs: Keyword arguments of :class:`MetaImageReader`.
        ct_kwargs: Keyword arguments of :class:`~medbundle.io.ct_series.CTImageReader`.
    """

    def __init__(self, meta_kwargs: dict[str, Any] | None = None, ct_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.meta = MetaImageReader(**dict(meta_kwargs or {}))
        self.ct = CTImageReader(**dict(ct_kwargs or {}))

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        """True for MetaImage names, and for what ``CTImageReader`` accepts."""
        return self.meta.verify_suffix(filename) or self.ct.verify_suffix(filename)

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> Any:
        """Read with the MetaImage reader for ``.mhd``/``.mha``, with ``CTImageReader`` otherwise."""
        names = ensure_tuple(data)
        kinds = {self.meta.verify_suffix(n) for n in names}
        if len(kinds) > 1:
            raise ValueError(f"{[str(n) for n in names]}: cannot stack MetaImage and other formats into one image.")
        if kinds == {True}:
            return ("meta", self.meta.read(data, **kwargs))
        return ("ct", self.ct.read(data, **kwargs))

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """Delegate to the reader that read ``img``."""
        kind, obj = img
        return (self.meta if kind == "meta" else self.ct).get_data(obj)


def volume_readers(**kwargs: Any) -> list[ImageReader]:
    """``[CTMetaImageReader(**kwargs)]``: CT volumes as MetaImage, NIfTI or DICOM (files or series), no ITK.

    Bundle config: ``"reader": "$medbundle.io.metaimage.volume_readers()"``.
    """
    return [CTMetaImageReader(**kwargs)]


def luna16_readers(**kwargs: Any) -> list[ImageReader]:
    """``[CTMetaImageReader(**kwargs)]`` for ``LoadImaged(reader=...)``: MetaImage, NIfTI and DICOM, no ITK.

    Bundle config: ``"reader": "$medbundle.io.metaimage.luna16_readers()"``.
    """
    return [CTMetaImageReader(**kwargs)]
