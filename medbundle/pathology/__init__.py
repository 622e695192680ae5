"""Whole-slide pathology domain: Camelyon16/PANDA adapters (:mod:`~medbundle.pathology.adapters`), slide reading
and tissue grids (:mod:`~medbundle.pathology.reader`, :mod:`~medbundle.pathology.tissue`), DICOM whole-slide
images (:mod:`~medbundle.pathology.dicom_wsi`: VL Whole Slide Microscopy series found, checked and written), the
synthetic slide generator (:mod:`~medbundle.pathology.synthetic`), bag transforms
(:mod:`~medbundle.pathology.transforms`), the attention-MIL network and losses (:mod:`~medbundle.pathology.networks`,
:mod:`~medbundle.pathology.losses`), slide inference (:mod:`~medbundle.pathology.inference`), handlers and heatmaps
(:mod:`~medbundle.pathology.handlers`, :mod:`~medbundle.pathology.viz`)."""
