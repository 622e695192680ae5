"""The MONAI Label integration: the layered environment and demo app (:mod:`~medbundle.monailabel.app`) and the
transforms that let MONAI Label 0.8.5 serve these bundles (:mod:`~medbundle.monailabel.transforms`)."""
