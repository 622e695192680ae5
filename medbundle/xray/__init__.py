"""Chest X-ray domain: ChestX-ray14 and CheXpert adapters (:mod:`~medbundle.xray.adapters`) and the synthetic
radiograph generator (:mod:`~medbundle.xray.synthetic`). Radiograph readers are shared, in
:mod:`medbundle.io.dicom`."""
