"""Reading and writing the files that more than one domain uses.

- :mod:`~medbundle.io.files`: atomic writes, weights-only torch files.
- :mod:`~medbundle.io.results`: result tables that long inference runs append to and resume from.
- :mod:`~medbundle.io.datalist`: datalist JSON, CSV columns by name.
- :mod:`~medbundle.io.class_labels`: class-label files (what MONAI Label's ``/train`` gets for a study).
- :mod:`~medbundle.io.dicom`: projection-radiograph DICOM and PNG/JPEG readers;
  :mod:`~medbundle.io.dicom_write`: minimal DICOM writing for the generators.
- :mod:`~medbundle.io.ct_series`: CT volumes from DICOM series (position order) and NIfTI;
  :mod:`~medbundle.io.metaimage`: MetaImage (``.mhd``/``.raw``) without ITK.
- :mod:`~medbundle.io.luna16_csv`: the LUNA16 challenge CSV files.

The package imports none of its modules, so that ``import medbundle.io.luna16_csv`` stays light (no torch).
"""
