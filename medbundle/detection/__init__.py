"""Detection domain: the LUNA16 adapter and submission rows (:mod:`~medbundle.detection.luna16`), world/voxel
box conversions (:mod:`~medbundle.detection.boxes`), the synthetic LUNA16 generator
(:mod:`~medbundle.detection.synthetic`), the RetinaNet network (:mod:`~medbundle.detection.networks`), its
trainer and evaluators (:mod:`~medbundle.detection.engines`), inferer (:mod:`~medbundle.detection.inferers`)
and metric, report and writer handlers (:mod:`~medbundle.detection.handlers`)."""
