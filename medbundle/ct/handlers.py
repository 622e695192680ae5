"""Grad-CAM for patch-trained 3D classifiers, stitched over the whole volume and saved as NIfTI."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.transforms import Invertd, SaveImage
from monai.utils import min_version, optional_import

from medbundle.data.failures import failure_reason
from medbundle.handlers.streaming import batch_field, engine_outputs
from medbundle.metrics.classification import multiclass_decision
from medbundle.utils import as_bool

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")

__all__ = ["GradCAMVolumeSaver"]

logger = logging.getLogger("medbundle.handlers")


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class GradCAMVolumeSaver:
    """Save a 3D Grad-CAM of the predicted class for every volume, aligned with the input image.

    Each window of the sliding-window classifier gets MONAI's :class:`~monai.visualize.GradCAM` map
    (not normalised per window), the windows are blended with MONAI's ``sliding_window_inference``
    (Gaussian weights), the whole map is scaled to [0, 1], and :class:`~monai.transforms.Invertd` undoes
    the spatial preprocessing (orientation, resampling, padding) so the NIfTI written by
    :class:`~monai.transforms.SaveImage` lies on the input's voxel grid with its affine.

    Args:
        network: the classifier the evaluator runs.
        target_layers: layer whose activations make the map, e.g. ``"layer3"`` for a MONAI ResNet.
        class_names: names per output channel (used in the file name).
        output_dir: folder for ``<image>_gradcam_<class>.nii.gz``.
        preprocessing: the inference preprocessing ``Compose`` (its invertible steps are undone).
        roi_size: the classifier's window size.
        sw_batch_size, overlap: sliding-window settings.
        enabled: config switch; when false nothing is attached.
        max_volumes: save maps for at most this many volumes per process (None: all; a resumed run and each ``torchrun``
            rank count afresh). Each map costs a backward pass per window, so a cap keeps batch inference fast. A map
            that fails is logged and left out; the prediction stands.
        thresholds_file: per-class thresholds; the mapped class is the one ``predictions.csv`` calls
            (:func:`~medbundle.metrics.classification.multiclass_decision`), arg-max without the file.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        target_layers: str,
        class_names: Sequence[str],
        output_dir: str | Path,
        preprocessing,
        roi_size: Sequence[int] | int,
        sw_batch_size: int = 4,
        overlap: float = 0.25,
        enabled: bool = True,
        filename_key: str = "filename",
        max_volumes: int | None = None,
        thresholds_file: str | Path | None = None,
    ) -> None:
        from medbundle.handlers.classification import load_thresholds

        thr, source = load_thresholds(thresholds_file, class_names)
        self.thresholds = thr if source.endswith(".json") else None
        self.max_volumes = max_volumes
        self._saved = 0
        self.network = network
        self.target_layers = target_layers
        self.class_names = list(class_names)
        self.output_dir = Path(output_dir)
        self.preprocessing = preprocessing
        self.roi_size = roi_size
        self.sw_batch_size = sw_batch_size
        self.overlap = overlap
        self.enabled = as_bool(enabled)
        self.filename_key = filename_key

    def attach(self, engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._save)

    def volume_cam(self, image: torch.Tensor, class_idx: int) -> torch.Tensor:
        """Grad-CAM of ``class_idx`` over a whole preprocessed volume ``(C, *spatial)`` -> ``(1, *spatial)``."""
        from monai.visualize import GradCAM

        cam = GradCAM(nn_module=self.network, target_layers=self.target_layers, postprocessing=_identity)
        x = torch.as_tensor(image).float().unsqueeze(0).to(next(self.network.parameters()).device)

        def predictor(patch: torch.Tensor) -> torch.Tensor:
            with torch.enable_grad():
                return cam(x=patch.clone().requires_grad_(True), class_idx=class_idx).detach()

        was_training = self.network.training
        self.network.eval()
        heat = sliding_window_inference(x, self.roi_size, self.sw_batch_size, predictor, overlap=self.overlap,
                                        mode="gaussian")[0]
        self.network.train(was_training)
        heat = torch.as_tensor(heat).float().cpu()
        lo, hi = heat.min(), heat.max()
        return (heat - lo) / (hi - lo) if hi > lo else torch.zeros_like(heat)

    def _save(self, engine) -> None:
        outputs = engine_outputs(engine)
        names = batch_field(engine, self.filename_key, len(outputs))
        for name, out in zip(names, outputs):
            if self.max_volumes is not None and self._saved >= self.max_volumes:
                return
            self._saved += 1
            try:
                self._save_one(str(name), out)
            except Exception as exc:  # noqa: BLE001 - a map that fails leaves the prediction standing
                logger.warning("no Grad-CAM for %s: %s", name, failure_reason(exc))

    def _save_one(self, name: str, out) -> None:
        image = out["image"]
        probs = torch.as_tensor(out["pred"]).detach().float().cpu().reshape(1, -1).numpy()
        c = int(multiclass_decision(probs, self.thresholds)[0])
        heat = self.volume_cam(image, c)
        meta_image = image.detach().cpu() if isinstance(image, MetaTensor) else MetaTensor(image.detach().cpu())
        data = {"image": meta_image, "cam": MetaTensor(heat, meta=dict(meta_image.meta))}
        inv = Invertd(keys="cam", transform=self.preprocessing, orig_keys="image", nearest_interp=False)(data)
        saver = SaveImage(output_dir=str(self.output_dir), output_postfix=f"gradcam_{self.class_names[c]}",
                          separate_folder=False, resample=False, output_dtype=np.float32, print_log=False)
        saver(inv["cam"])
        logger.info("saved Grad-CAM (%s) for %s", self.class_names[c], name)
