"""medbundle.transforms: only what MONAI lacks.

- :class:`XrayDicomReader`: projection-radiograph DICOM -> displayed picture (modality LUT, VOI/window,
  MONOCHROME1 inverted) as float32 in [0, 255], axes as MONAI's ``PILReader``.
- :class:`XrayImageReader` / :func:`xray_readers`: one reader for datalists mixing PNG/JPEG and DICOM.
"""

from medbundle.transforms.dicom import (
    XRAY_META_TAGS,
    XrayDicomReader,
    XrayImageReader,
    is_dicom_file,
    xray_readers,
)

__all__ = ["XRAY_META_TAGS", "XrayDicomReader", "XrayImageReader", "is_dicom_file", "xray_readers"]
