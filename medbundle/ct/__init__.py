"""CT volume classification domain: CSV/MedMNIST 3D adapters (:mod:`~medbundle.ct.adapters`), the synthetic CT
generator (:mod:`~medbundle.ct.synthetic`), windowing, body masks and lesion-aware crop weights
(:mod:`~medbundle.ct.transforms`) and 3D Grad-CAM volumes (:mod:`~medbundle.ct.handlers`). CT readers are
shared, in :mod:`medbundle.io.ct_series` and :mod:`medbundle.io.metaimage`."""
