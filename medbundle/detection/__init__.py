"""Detection domain.

3D (CT nodules): the LUNA16 adapter and submission rows (:mod:`~medbundle.detection.luna16`), world/voxel box
conversions (:mod:`~medbundle.detection.boxes`), the synthetic LUNA16 generator (:mod:`~medbundle.detection.synthetic`),
the RetinaNet network (:mod:`~medbundle.detection.networks`), its trainer and evaluators
(:mod:`~medbundle.detection.engines`), inferer (:mod:`~medbundle.detection.inferers`) and metric, report and writer
handlers (:mod:`~medbundle.detection.handlers`).

2D (chest radiograph lesions): NODE21 and VinDr-CXR adapters (:mod:`~medbundle.detection.cxr_datasets`), weighted box
fusion of readers (:mod:`~medbundle.detection.box_fusion`), synthetic radiographs in both layouts
(:mod:`~medbundle.detection.synthetic_cxr`), torchvision's Faster R-CNN / RetinaNet / FCOS behind the same engines
with online hard example mining (:mod:`~medbundle.detection.torchvision_detectors`), anchors from training boxes
(:mod:`~medbundle.detection.anchors`), and the pixel-frame report and writer
(:mod:`~medbundle.detection.image_handlers`). Boxes follow any geometric transform through the image affine
(:class:`~medbundle.detection.transforms.BoxesFollowImaged`).
"""
