"""MONAI workflows (Ignite engines) that train and evaluate MONAI's ``RetinaNetDetector`` from a bundle config.

MONAI's ``SupervisedTrainer`` / ``SupervisedEvaluator`` call ``inferer(inputs, network)`` and a separate loss
function on a collated batch; a ``RetinaNetDetector`` instead takes a *list* of images of different sizes and
computes its own losses (training) or returns boxes (evaluation). :class:`DetectionTrainer` and
:class:`DetectionEvaluator` run the detector the way MONAI's detection tutorial does, inside MONAI's
``Trainer`` / ``Evaluator`` so that MONAI's handlers (``StatsHandler``, ``ValidationHandler``,
``CheckpointSaver``, ``LrScheduleHandler``, ...) and ``key_val_metric`` work unchanged::

    "trainer": {"_target_": "medbundle.detection.engines.DetectionTrainer", "device": "@device", "max_epochs": 300,
                "train_data_loader": "@train#dataloader", "detector": "@detector",
                "optimizer": "@optimizer", "train_handlers": "@train#handlers", "amp": true}

Batches: the data loaders use ``collate_fn=monai.data.utils.no_collation``, so a batch is a list of item dicts,
or a list of lists of dicts when a cropping transform (``RandCropBoxByPosNegLabeld``) returns several
samples per image; both are flattened to one list of items. Each item holds ``image`` (``(C, *spatial)``
tensor, ideally a ``MetaTensor`` whose ``meta["affine"]`` is the voxel-to-world matrix of the *preprocessed*
image), ``box`` (``(N, 2 * spatial_dims)`` boxes in image voxel coordinates, ``xyzxyz`` = MONAI's
``StandardMode``, as ``ConvertBoxToStandardModed`` + ``AffineBoxToImageCoordinated`` give them) and
``label`` (``(N,)`` class indices).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor, decollate_batch
from monai.engines import Evaluator, Trainer
from monai.engines.utils import IterationEvents, default_metric_cmp_fn
from monai.transforms import Transform
from torch.optim.optimizer import Optimizer
from torch.utils.data import DataLoader

from medbundle.detection.inferers import DetectorInferer
from medbundle.detection.transforms import VOXEL_REGION_SHIFT, shift_boxes
from medbundle.engines.streaming import SkipFailedItemsMixin

__all__ = ["DetectionTrainer", "DetectionEvaluator", "StreamingDetectionEvaluator", "flatten_detection_batch",
           "image_meta"]


def flatten_detection_batch(batchdata: Any) -> list[dict]:
    """Flatten a detection batch to a list of item dicts.

    Args:
        batchdata: What a data loader with ``collate_fn=no_collation`` gives: a list of dicts, or a list whose elements
            are lists of dicts (several crops of one image); a single dict with a batch-first ``image`` (default
            collation) is decollated.

    Returns:
        list of dict, one per image (crop), in batch order.
    """
    if batchdata is None:
        raise ValueError("Must provide batch data for current iteration.")
    if isinstance(batchdata, Mapping):
        return [dict(d) for d in decollate_batch(batchdata)]
    items: list[dict] = []
    for element in batchdata:
        if isinstance(element, Mapping):
            items.append(dict(element))
        elif isinstance(element, (list, tuple)):
            items.extend(flatten_detection_batch(element))
        else:
            raise TypeError(
                f"a detection batch must be a list of dicts (or of lists of dicts), found an element of type "
                f"{type(element).__name__}; use collate_fn=monai.data.utils.no_collation in the data loader."
            )
    return items


def _to_device(x: Any, device: torch.device, non_blocking: bool) -> torch.Tensor:
    """Plain tensor (MetaTensor meta dropped: the detector does not need it) on ``device``, float32."""
    t = x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
    return t.to(device=device, dtype=torch.float32, non_blocking=non_blocking)


def _boxes_labels(item: Mapping, box_key: str, label_key: str, spatial_dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, 2 * spatial_dims)`` float32 boxes and ``(N,)`` int64 labels of one item (CPU)."""
    boxes = item[box_key]
    boxes = boxes.as_tensor() if isinstance(boxes, MetaTensor) else torch.as_tensor(np.asarray(boxes, dtype=np.float32))
    labels = item[label_key]
    labels = labels.as_tensor() if isinstance(labels, MetaTensor) else torch.as_tensor(np.asarray(labels))
    boxes = boxes.detach().to(torch.float32).reshape(-1, 2 * spatial_dims)
    labels = labels.detach().to(torch.long).reshape(-1)
    if boxes.shape[0] != labels.shape[0]:
        raise ValueError(f"an item has {boxes.shape[0]} boxes but {labels.shape[0]} labels.")
    return boxes, labels


def image_meta(item: Mapping, image_key: str = "image") -> dict[str, Any]:
    """Meta data of an item's image that detection writers need.

    Returns:
        dict: ``affine``: ``(4, 4)`` float64 numpy voxel-to-world matrix of the image as it is now (after preprocessing;
            RAS for MONAI readers; a 2D image's ``(3, 3)`` embedded), identity when the image carries none;
            ``filename_or_obj`` (str or None); ``spatial_shape``: the shape the reader gave (before preprocessing), or
            the current one; ``shape``: the current spatial shape; ``spacing``: the reader's pixel spacing in mm
            (``meta["spacing"]``, of the image as read) or None when the reader gives none (PNG).
    """
    img = item[image_key]
    meta: Mapping = {}
    if isinstance(img, MetaTensor):
        meta = img.meta
    elif isinstance(item.get(f"{image_key}_meta_dict"), Mapping):
        meta = item[f"{image_key}_meta_dict"]
    affine = meta.get("affine")
    if affine is None:
        affine = np.eye(4)
    affine = np.asarray(affine.detach().cpu() if torch.is_tensor(affine) else affine, dtype=np.float64)
    if affine.shape != (4, 4):  # a 2D reader's (3, 3): embed it, the third axis untouched
        n = affine.shape[0] - 1
        full = np.eye(4)
        full[:n, :n], full[:n, 3] = affine[:n, :n], affine[:n, n]
        affine = full
    fname = meta.get("filename_or_obj")
    shape = [int(s) for s in img.shape[1:]]
    spatial_shape = meta.get("spatial_shape")
    spatial_shape = shape if spatial_shape is None else [int(s) for s in np.asarray(spatial_shape).reshape(-1)]
    spacing = meta.get("spacing")
    if spacing is not None:
        spacing = np.asarray(spacing.detach().cpu() if torch.is_tensor(spacing) else spacing, dtype=np.float64)
    return {
        "affine": affine,
        "filename_or_obj": None if fname is None else str(fname),
        "spatial_shape": spatial_shape,
        "shape": shape,
        "spacing": spacing,
    }


def _autocast(engine: Any) -> contextlib.AbstractContextManager:
    if not engine.amp:
        return contextlib.nullcontext()
    device = engine.state.device
    device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    return torch.autocast(device_type, **engine.amp_kwargs)


class DetectionTrainer(Trainer):
    """Train a MONAI ``RetinaNetDetector`` (its ``network``) in a MONAI workflow.

    Args:
        device: Device the images and targets are moved to (the detector must already be there).
        max_epochs: Epochs to train.
        train_data_loader: Loader of detection items (see the module docstring), ``collate_fn=no_collation``.
        detector: ``monai.apps.detection.networks.retinanet_detector.RetinaNetDetector`` with matcher and sampler set
            (``set_atss_matcher``, ``set_hard_negative_sampler``).
        optimizer: Optimizer of ``detector.network.parameters()``.
        epoch_length, non_blocking, iteration_update, postprocessing, key_train_metric, additional_metrics,
        metric_cmp_fn, train_handlers, event_names, event_to_attr, to_kwargs, amp_kwargs: As in
            ``monai.engines.SupervisedTrainer``.
        amp: Forward under ``torch.autocast`` and scale the loss with the ``GradScaler`` MONAI's ``Trainer.run``
            creates.
        cls_loss_weight, box_loss_weight: ``loss = cls_loss_weight * classification loss + box_loss_weight * box
            regression loss``.
        decollate: Keep False: the iteration output is already a dict of scalar losses.
        image_key, box_key, label_key: Keys of the image ``(C, *spatial)``, the ``(N, 2 * spatial_dims)`` voxel
            ``xyzxyz`` boxes and the ``(N,)`` labels in each item. They are handed to the detector under its
            ``target_box_key`` / ``target_label_key``.
        optim_set_to_none: ``optimizer.zero_grad(set_to_none=...)``.
        clip_grad_norm: If given, clip the gradient norm of ``detector.network`` to this value before the step.

    Note:
        ``engine.state.output`` after each iteration is ``{"loss", "cls_loss", "box_reg_loss"}`` (detached scalar
        tensors), so ``StatsHandler(output_transform=from_engine(["loss"], first=True))`` logs the loss.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        detector: torch.nn.Module,
        optimizer: Optimizer,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        iteration_update: Callable | None = None,
        postprocessing: Transform | None = None,
        key_train_metric: dict[str, Any] | None = None,
        additional_metrics: dict[str, Any] | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        event_names: list | None = None,
        event_to_attr: dict | None = None,
        decollate: bool = False,
        to_kwargs: dict | None = None,
        amp_kwargs: dict | None = None,
        cls_loss_weight: float = 1.0,
        box_loss_weight: float = 1.0,
        image_key: str = "image",
        box_key: str = "box",
        label_key: str = "label",
        optim_set_to_none: bool = False,
        clip_grad_norm: float | None = None,
    ) -> None:
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            iteration_update=iteration_update,
            postprocessing=postprocessing,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            handlers=train_handlers,
            amp=amp,
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=decollate,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
        )
        self.detector = detector
        self.network = detector.network  # what CheckpointSaver / bundle configs refer to
        self.optimizer = optimizer
        self.cls_loss_weight = float(cls_loss_weight)
        self.box_loss_weight = float(box_loss_weight)
        self.image_key, self.box_key, self.label_key = image_key, box_key, label_key
        self.optim_set_to_none = optim_set_to_none
        self.clip_grad_norm = clip_grad_norm

    def _iteration(self, engine: DetectionTrainer, batchdata: Any) -> dict[str, torch.Tensor]:
        """One optimisation step on a batch of detection items; returns the losses (see the class notes)."""
        det = engine.detector
        items = flatten_detection_batch(batchdata)
        if not items:
            raise ValueError("empty detection batch.")
        device = engine.state.device
        images = [_to_device(it[engine.image_key], device, engine.non_blocking) for it in items]
        targets = []
        for it in items:
            boxes, labels = _boxes_labels(it, engine.box_key, engine.label_key, det.spatial_dims)
            targets.append(
                {
                    det.target_box_key: boxes.to(device, non_blocking=engine.non_blocking),
                    det.target_label_key: labels.to(device, non_blocking=engine.non_blocking),
                }
            )
        engine.state.output = {}
        det.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with _autocast(engine):
            losses = det(images, targets)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            cls_loss, box_loss = losses[det.cls_key], losses[det.box_reg_key]
            loss = engine.cls_loss_weight * cls_loss + engine.box_loss_weight * box_loss
        engine.state.output = {"loss": loss, "cls_loss": cls_loss.detach(), "box_reg_loss": box_loss.detach()}
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        scaler = engine.scaler if engine.amp else None
        if scaler is not None:
            scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            if engine.clip_grad_norm is not None:
                scaler.unscale_(engine.optimizer)
                torch.nn.utils.clip_grad_norm_(det.network.parameters(), engine.clip_grad_norm)
            scaler.step(engine.optimizer)
            scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            if engine.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(det.network.parameters(), engine.clip_grad_norm)
            engine.optimizer.step()
        engine.state.output["loss"] = loss.detach()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


class DetectionEvaluator(Evaluator):
    """Run a MONAI ``RetinaNetDetector`` over a validation / test loader in a MONAI workflow.

    Args:
        device: Device the images are moved to.
        val_data_loader: Loader of detection items (module docstring), ``collate_fn=no_collation``; ``box`` / ``label``
            are optional (inference has none).
        detector: The ``RetinaNetDetector``; for whole scans set its sliding-window inferer
            (``set_sliding_window_inferer``).
        inferer: Optional :class:`medbundle.detection.inferers.DetectorInferer` (or any callable ``inferer(images,
            network)`` returning the detector's per-image dicts); None: the detector is called directly as
            ``use_inferer`` says.
        use_inferer: Without ``inferer``: True: ``detector(images, use_inferer=True)`` (the detector's sliding window
            inferer); False: one forward pass of the whole image; None (default): True when the detector has an inferer
            set.
        epoch_length, non_blocking, iteration_update, postprocessing, key_val_metric, additional_metrics,
        metric_cmp_fn, val_handlers, amp, event_names, event_to_attr, to_kwargs, amp_kwargs: As in
            ``monai.engines.SupervisedEvaluator``.
        decollate: Keep False: the output is already a list of per-image dicts.
        image_key, box_key, label_key: Item keys of the image and, when present, the ground-truth boxes and labels;
            ``box_key=None``: never read ground truth (inference on items that carry world-coordinate boxes).
        voxel_regions: The items' boxes are in voxel-region coordinates
            (:class:`~medbundle.detection.transforms.BoxesToVoxelRegionsd`): the ground truth is moved back to
            voxel-centre coordinates, as the inferer (``DetectorInferer(voxel_regions=True)``, which must agree) moves
            the predictions.

    Note:
        ``engine.state.output`` is a list with one dict per image:
        ``image_meta`` (see :func:`image_meta`: ``affine`` of the preprocessed image, ``filename_or_obj``,
        ``spatial_shape``, ``shape``, ``spacing``), ``seriesuid`` and ``image_id`` (the item's, or None), ``pred_box``
        (``(K, 2 * spatial_dims)`` float32, image voxel coordinates of the preprocessed image, ``xyzxyz`` = the
        detector's ``StandardMode``), ``pred_label`` ``(K,)`` int64, ``pred_score`` ``(K,)`` float32, ``box_mode``
        ``"xyzxyz"``, and when the item has them ``box`` ``(N, 2 * spatial_dims)`` (same frame and mode) and
        ``label`` ``(N,)``. All tensors are on the CPU. :class:`medbundle.detection.handlers.DetectionReport` and
        ``DetectionWriter`` read this.
    """

    def __init__(
        self,
        device: str | torch.device,
        val_data_loader: Iterable | DataLoader,
        detector: torch.nn.Module,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        iteration_update: Callable | None = None,
        postprocessing: Transform | None = None,
        key_val_metric: dict[str, Any] | None = None,
        additional_metrics: dict[str, Any] | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        val_handlers: Sequence | None = None,
        amp: bool = False,
        event_names: list | None = None,
        event_to_attr: dict | None = None,
        decollate: bool = False,
        to_kwargs: dict | None = None,
        amp_kwargs: dict | None = None,
        inferer: Callable | None = None,
        use_inferer: bool | None = None,
        image_key: str = "image",
        box_key: str = "box",
        label_key: str = "label",
        voxel_regions: bool = False,
    ) -> None:
        super().__init__(
            device=device,
            val_data_loader=val_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            iteration_update=iteration_update,
            postprocessing=postprocessing,
            key_val_metric=key_val_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            val_handlers=val_handlers,
            amp=amp,
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=decollate,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
        )
        self.detector = detector
        self.network = detector.network
        # one code path: without an explicit inferer, the detector's own call (sliding window or not)
        self.inferer = inferer if inferer is not None else DetectorInferer(detector, use_inferer, voxel_regions)
        if getattr(self.inferer, "voxel_regions", voxel_regions) != voxel_regions:
            raise ValueError(
                f"DetectionEvaluator(voxel_regions={voxel_regions}) with an inferer that has voxel_regions="
                f"{self.inferer.voxel_regions}: predictions and ground truth would be half a voxel apart; set both."
            )
        self.use_inferer = use_inferer
        self.image_key, self.box_key, self.label_key = image_key, box_key, label_key
        self.voxel_regions = bool(voxel_regions)

    def _iteration(self, engine: DetectionEvaluator, batchdata: Any) -> list[dict[str, Any]]:
        """Detect boxes in every image of the batch; returns the per-image dicts of the class notes."""
        det = engine.detector
        items = flatten_detection_batch(batchdata)
        device = engine.state.device
        images = [_to_device(it[engine.image_key], device, engine.non_blocking) for it in items]
        det.eval()
        with torch.no_grad(), _autocast(engine):
            preds = engine.inferer(images, det.network)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        outputs: list[dict[str, Any]] = []
        for it, pred in zip(items, preds):
            out: dict[str, Any] = {
                "image_meta": image_meta(it, engine.image_key),
                "seriesuid": it.get("seriesuid"),
                "image_id": it.get("image_id"),
                "pred_box": pred[det.target_box_key].detach().float().cpu(),
                "pred_label": pred[det.target_label_key].detach().long().cpu(),
                "pred_score": pred[det.pred_score_key].detach().float().cpu(),
                "box_mode": "xyzxyz",
            }
            if engine.box_key in it and engine.label_key in it:
                out["box"], out["label"] = _boxes_labels(it, engine.box_key, engine.label_key, det.spatial_dims)
                if engine.voxel_regions:
                    out["box"] = shift_boxes(out["box"], -VOXEL_REGION_SHIFT)
            outputs.append(out)
        engine.state.output = outputs
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return outputs


class StreamingDetectionEvaluator(SkipFailedItemsMixin, DetectionEvaluator):
    """:class:`DetectionEvaluator` that skips and records failing scans (same
    arguments); see :mod:`medbundle.engines.streaming`."""
