"""One recipe per bundle: what the demo, ``verify``, ``label-app`` and the tests need to know about it.

A bundle folder holds its configs; a recipe holds what running it on synthetic data takes: how to write its
data at demo size and at tiny size, where inference reads, which ``metrics.json`` figure is its headline and
what it should reach, which overrides keep the model-zoo checks CPU-sized and what example input the export
check feeds, and how the MONAI Label demo trains it and which study image it serves.

Adding a bundle is its folder under ``bundles/`` plus one :class:`Recipe` passed to :func:`register` (the four
bundles of this project are registered below). Every reader goes through :func:`get_recipe`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LabelDemo", "Recipe", "VerifyProfile", "get_recipe", "recipe_names", "register"]

#: ``(folder, seed) -> overrides``: writes synthetic data under the folder; returns ``monai.bundle`` overrides
#: for training and evaluation, and under ``"inference"`` those for inference
DemoData = Callable[[Path, int], dict[str, Any]]
#: ``folder -> (workflow overrides, inference overrides)`` for tiny synthetic data
TinyData = Callable[[Path], tuple[dict[str, Any], dict[str, Any]]]


@dataclass
class VerifyProfile:
    """How ``medbundle verify`` keeps the model-zoo checks CPU-sized.

    Attributes:
        make_data: tiny synthetic data for the workflow property checks (None: those checks are skipped).
        net_overrides: config overrides for the network in/out check.
        export_overrides: config overrides for the TorchScript export check.
        workflow_overrides: config overrides for the train/inference property checks.
        example_shape: input shape of the eager-vs-TorchScript comparison (None: that comparison is skipped).
        note: what differs from the published network, shown in the report.
    """

    make_data: TinyData | None = None
    net_overrides: dict[str, Any] = field(default_factory=dict)
    export_overrides: dict[str, Any] = field(default_factory=dict)
    workflow_overrides: dict[str, Any] = field(default_factory=dict)
    example_shape: tuple[int, ...] | None = None
    note: str = ""


@dataclass
class LabelDemo:
    """How ``medbundle label-app`` trains the bundle on small data and which study image MONAI Label serves.

    Attributes:
        common: overrides shared by training and inference (they shape the network or its input).
        train: training-only overrides.
        make_data: ``folder -> {"dataset_dir": ..., ["datalist_file": ...]}``: writes the small data set.
        study: ``(studies folder, data) -> image id``: puts one image of that data into the studies folder.
        labelled: ``(studies folder, data, n) -> [(image id, labels), ...]``: adds ``n`` further images whose class
            labels the demo saves for MONAI Label's ``/train`` (None: the bundle has none).
    """

    common: dict[str, Any]
    train: dict[str, Any]
    make_data: Callable[[Path], dict[str, Path]]
    study: Callable[[Path, Mapping[str, Any]], str]
    labelled: Callable[[Path, Mapping[str, Any], int], list[tuple[str, list[str]]]] | None = None


@dataclass
class Recipe:
    """Everything the project's tools need about one bundle besides its folder.

    Attributes:
        name: the bundle's folder name.
        demo_data: writes the demo's data (:data:`DemoData`).
        headline: ``(metrics.json key, label)`` of the figure the demo reports (dotted keys reach nested values).
        target: the value the headline should reach on the demo.
        extra: further ``(key, label)`` figures shown beside the headline.
        verify: the ``medbundle verify`` profile, or a function that makes it when asked (for profiles that read the
            bundle's files).
        label: the MONAI Label demo (None: not served in the demo app).
    """

    name: str
    demo_data: DemoData
    headline: tuple[str, str]
    target: float
    extra: list[tuple[str, str]] = field(default_factory=list)
    verify: VerifyProfile | Callable[[], VerifyProfile] = field(default_factory=VerifyProfile)
    label: LabelDemo | None = None

    def verify_profile(self) -> VerifyProfile:
        """The ``medbundle verify`` profile (made now if :attr:`verify` is a function)."""
        return self.verify() if callable(self.verify) else self.verify


_RECIPES: dict[str, Recipe] = {}


def register(recipe: Recipe) -> Recipe:
    """Add (or replace) the recipe of ``recipe.name``; returns it."""
    _RECIPES[recipe.name] = recipe
    return recipe


def get_recipe(name: str) -> Recipe:
    """The recipe of bundle ``name`` (a folder name or a path to the bundle folder).

    Raises:
        KeyError: no recipe is registered under that name; the message lists the known ones.
    """
    key = Path(str(name)).name
    if key not in _RECIPES:
        raise KeyError(f"no recipe for bundle {key!r}; bundles with a recipe: {', '.join(sorted(_RECIPES))}")
    return _RECIPES[key]


def recipe_names() -> list[str]:
    """Names of the bundles with a recipe, in registration order."""
    return list(_RECIPES)


def _demo_overlay_values(bundle: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """Values of ``keys`` in a bundle's ``configs/demo.json`` (the demo's small backbone, for ``verify``)."""
    from medbundle.bundle import bundle_dir

    demo = bundle_dir(bundle) / "configs" / "demo.json"
    values = json.loads(demo.read_text()) if demo.is_file() else {}
    return {k: values[k] for k in keys if k in values}


# ------------------------------------------------------------------------------------------- chest X-ray
CHEST = "chest_xray_classification"


def _chest_demo(data_root: Path, seed: int = 0) -> dict[str, Any]:
    from medbundle.io.datalist import write_datalist
    from medbundle.xray.adapters import chestxray14_datalist
    from medbundle.xray.synthetic import generate_chestxray14

    ds = data_root / "ChestXray14"
    if not (ds / "Data_Entry_2017.csv").is_file():
        generate_chestxray14(ds, seed=seed, min_pos_per_split=8)
    datalist = chestxray14_datalist(ds, val_fraction=0.15, seed=seed)
    test_list = write_datalist(datalist, data_root / "datalist.json")
    return {"dataset_dir": str(ds), "val_fraction": 0.15, "inference": {"input": str(test_list)}}


def _chest_tiny(root: Path) -> tuple[dict, dict]:
    from medbundle.xray.synthetic import generate_chestxray14

    data = root / "ChestXray14"
    generate_chestxray14(data, n_patients=24, size=64, n_dicom=0, seed=0, min_pos_per_split=1)
    return {"dataset_dir": str(data)}, {"dataset_dir": str(data / "images")}


def _chest_label_data(root: Path) -> dict[str, Path]:
    from medbundle.xray.synthetic import generate_chestxray14

    data = root / "ChestXray14"
    generate_chestxray14(data, n_patients=120, size=96, n_dicom=4, seed=1, min_pos_per_split=2)
    return {"dataset_dir": data}


def _chest_study(studies: Path, data: Mapping[str, Any]) -> str:
    from medbundle.xray.adapters import chestxray14_datalist

    dl = chestxray14_datalist(data["dataset_dir"], val_fraction=0.2, seed=0)
    png = next(it["image"] for it in dl["testing"] if str(it["image"]).endswith(".png"))
    shutil.copy(png, studies / "cxr_case.png")
    return "cxr_case"


def _chest_labelled(studies: Path, data: Mapping[str, Any], n: int) -> list[tuple[str, list[str]]]:
    from medbundle.xray.adapters import chestxray14_datalist

    dl = chestxray14_datalist(data["dataset_dir"], val_fraction=0.2, seed=0)
    pngs = [it for it in dl["training"] if str(it["image"]).endswith(".png")][:n]
    out = []
    for i, item in enumerate(pngs):
        shutil.copy(item["image"], studies / f"cxr_train_{i:02d}.png")
        out.append((f"cxr_train_{i:02d}", [dl["labels"][j] for j, v in enumerate(item["label"]) if v == 1]))
    return out


register(Recipe(
    name=CHEST,
    demo_data=_chest_demo,
    headline=("mean_auroc", "mean AUROC (test)"),
    target=0.90,
    extra=[("macro.sensitivity", "sensitivity"), ("macro.specificity", "specificity")],
    verify=VerifyProfile(_chest_tiny, workflow_overrides={"image_size": 48, "cache_rate": 0.0},
                         example_shape=(2, 1, 64, 64), note="DenseNet121 as published"),
    label=LabelDemo(common={"image_size": 48}, train={"num_epochs": 2, "batch_size": 16, "cache_rate": 1.0},
                    make_data=_chest_label_data, study=_chest_study, labelled=_chest_labelled),
))


# ---------------------------------------------------------------------------------------------- CT volumes
CT = "ct_volume_classification"
_CT_LABEL_CLASSES = ["normal", "consolidation"]


def _ct_demo(data_root: Path, seed: int = 0) -> dict[str, Any]:
    from medbundle.ct.adapters import synthetic_ct_datalist
    from medbundle.ct.synthetic import generate_ct_dataset
    from medbundle.io.datalist import write_datalist

    ds = data_root / "ct_volumes"
    if not (ds / "labels.csv").is_file():
        generate_ct_dataset(ds, n_volumes=160, seed=seed)
    datalist = write_datalist(synthetic_ct_datalist(ds, val_fraction=0.2, seed=seed), data_root / "datalist.json")
    return {"dataset_dir": str(ds), "datalist_file": str(datalist), "inference": {"input": str(datalist)}}


def _ct_tiny(root: Path) -> tuple[dict, dict]:
    from medbundle.ct.adapters import synthetic_ct_datalist
    from medbundle.ct.synthetic import generate_ct_dataset
    from medbundle.io.datalist import write_datalist

    data = root / "ct_volumes"
    generate_ct_dataset(data, n_volumes=12, shape=(40, 40, 24), n_dicom_series=0, seed=0, min_per_class=1,
                        write_masks=False)
    dl = write_datalist(synthetic_ct_datalist(data, val_fraction=0.34, seed=0), root / "ct_datalist.json")
    return ({"dataset_dir": str(data), "datalist_file": str(dl)},
            {"dataset_dir": str(data / "volumes"), "datalist_file": str(dl)})


def _ct_label_data(root: Path) -> dict[str, Path]:
    from medbundle.ct.adapters import synthetic_ct_datalist
    from medbundle.ct.synthetic import generate_ct_dataset
    from medbundle.io.datalist import write_datalist

    data = root / "ct_volumes"
    classes = tuple(_CT_LABEL_CLASSES)
    generate_ct_dataset(data, n_volumes=24, shape=(64, 64, 40), class_names=classes,
                        prevalences=dict.fromkeys(classes, 1.0 / len(classes)), n_dicom_series=0, seed=3,
                        min_per_class=3)
    dl = write_datalist(synthetic_ct_datalist(data, val_fraction=0.25, seed=0), root / "ct_datalist.json")
    return {"dataset_dir": data, "datalist_file": Path(dl)}


def _ct_study(studies: Path, data: Mapping[str, Any]) -> str:
    shutil.copy(sorted((Path(data["dataset_dir"]) / "volumes").glob("*.nii.gz"))[0], studies / "ct_case.nii.gz")
    return "ct_case"


_CT_SMALL = {"resnet_depth": 10, "widen_factor": 0.5}
register(Recipe(
    name=CT,
    demo_data=_ct_demo,
    headline=("mean_auroc", "mean AUROC (test)"),
    target=0.90,
    extra=[("per_class.nodule.auroc", "nodule AUROC"), ("macro.sensitivity", "sensitivity"),
           ("macro.specificity", "specificity")],
    verify=VerifyProfile(_ct_tiny, net_overrides=_CT_SMALL, export_overrides=_CT_SMALL,
                         workflow_overrides={"cache_rate": 0.0, **_CT_SMALL}, example_shape=(2, 1, 32, 32, 32),
                         note="3D ResNet with resnet_depth=10, widen_factor=0.5 (published: ResNet50), CPU-sized"),
    label=LabelDemo(common={"class_names": _CT_LABEL_CLASSES},
                    train={"num_epochs": 2, "val_interval": 1, "patches_per_volume": 2},
                    make_data=_ct_label_data, study=_ct_study),
))


# -------------------------------------------------------------------------------------- nodule detection
NODULES = "lung_nodule_retinanet_detection"


def _nodule_demo(data_root: Path, seed: int = 0) -> dict[str, Any]:
    from medbundle.detection.synthetic import generate_luna16

    ds = data_root / "LUNA16"
    if not (ds / "seriesuids.csv").is_file():
        # 7 subsets of 8 scans: 3 train, 1 validation (fold 3, configs/demo.json), 3 test (folds 4-6, ~50
        # nodules); scans of 144 x 144 x 96 voxels at about 1.0 x 1.0 x 1.5 mm, the demo's
        # resampling target. The test folds cost seconds of inference each and make one nodule ~2 % of the
        # sensitivity instead of ~6 %, so a seed's CPM says more about the recipe than about its test draw.
        generate_luna16(ds, n_scans=56, shape=(144, 144, 96), spacing=(1.0, 1.0, 1.5), n_subsets=7, seed=seed,
                        nodules_per_scan=(1, 3), diameter_range=(3.0, 30.0), diameter_distribution="luna16")
    # configs/demo.json tests on fold 4 (the tests' 5-subset data); the demo's data has folds 4-6 to test on
    return {"dataset_dir": str(ds), "test_fold": [4, 5, 6], "inference": {"input": str(ds / "subset4")}}


def _nodule_tiny(root: Path) -> tuple[dict, dict]:
    from medbundle.detection.synthetic import generate_luna16

    data = root / "LUNA16"
    generate_luna16(data, n_scans=5, shape=(40, 40, 24), spacing=(2.0, 2.0, 3.0), n_subsets=5, seed=0,
                    nodules_per_scan=(1, 1), diameter_range=(8.0, 12.0), excluded_per_scan=(0, 0))
    return {"dataset_dir": str(data)}, {"dataset_dir": str(data / "subset0")}


def _nodule_label_data(root: Path) -> dict[str, Path]:
    from medbundle.detection.synthetic import generate_luna16

    data = root / "LUNA16"
    generate_luna16(data, n_scans=10, shape=(64, 64, 40), spacing=(2.0, 2.0, 3.0), n_subsets=5, seed=1,
                    nodules_per_scan=(1, 2), diameter_range=(8.0, 20.0), excluded_per_scan=(0, 1))
    return {"dataset_dir": data}


def _nodule_study(studies: Path, data: Mapping[str, Any]) -> str:
    """The first LUNA16 scan as NIfTI (MONAI Label's datastore does not list ``.mhd``)."""
    import nibabel as nib
    from monai.transforms import LoadImage

    from medbundle.io.metaimage import luna16_readers

    mhd = sorted(Path(data["dataset_dir"]).rglob("*.mhd"))[0]
    img = LoadImage(image_only=True, reader=luna16_readers())(str(mhd))
    nib.save(nib.Nifti1Image(img.numpy(), img.affine.numpy()), studies / "det_case.nii.gz")
    return "det_case"


def _nodule_verify() -> VerifyProfile:
    small = _demo_overlay_values(NODULES, ("resnet_depth", "widen_factor", "fpn_channels", "conv1_t_size",
                                           "conv1_t_stride"))
    return VerifyProfile(_nodule_tiny, net_overrides=small, export_overrides=small,
                         workflow_overrides={"cache_rate": 0.0, **small}, example_shape=(1, 1, 64, 64, 32),
                         note="RetinaNet with the demo overlay's small backbone "
                         + ", ".join(f"{k}={v}" for k, v in small.items()) + " (published: ResNet50)")


register(Recipe(
    name=NODULES,
    demo_data=_nodule_demo,
    headline=("cpm", "LUNA16 CPM (test)"),
    target=0.80,
    extra=[("sensitivity_at_1fp_by_size.under_10mm", "sens. 1 FP/scan <10 mm"),
           ("sensitivity_at_1fp_by_size.10mm_or_more", "sens. 1 FP/scan >=10 mm"),
           ("map", "mAP IoU 0.1-0.5"), ("mar", "mAR")],
    verify=_nodule_verify,
    label=LabelDemo(
        common={"spacing": [2.0, 2.0, 3.0], "patch_size": [48, 48, 32], "val_patch_size": [64, 64, 48],
                "base_anchor_shapes": [[3, 3, 2], [5, 5, 3]],
                "box_selector": {"score_thresh": 0.0, "topk_candidates_per_level": 100, "nms_thresh": 0.22,
                                 "detections_per_img": 20}},
        train={"crops_per_scan": 2, "num_epochs": 1, "val_interval": 1, "warmup_epochs": 1, "num_workers": 0},
        make_data=_nodule_label_data, study=_nodule_study),
))


# ------------------------------------------------------------------------------------ chest X-ray lesions
CXR_LESIONS = "chest_xray_lesion_detection"


def _cxr_lesion_demo(data_root: Path, seed: int = 0) -> dict[str, Any]:
    from medbundle.detection.cxr_datasets import node21_datalist
    from medbundle.detection.synthetic_cxr import generate_node21
    from medbundle.io.datalist import write_datalist

    ds = data_root / "NODE21"
    if not (ds / "metadata.csv").is_file():
        # NODE21's layout at 256 px (the published recipe reads its 1024 px images): 600 images, half with nodules
        # of NODE21's 6-30 mm; the nodules are drawn with more contrast (45-80 grey levels over a 0-255 background
        # with smooth noise of sd ~7) than the generator's faint default, so that a detector trained from scratch
        # on two CPU cores learns them within the demo's minutes. configs/demo.json's fractions give 70 / 15 / 15 %
        # of the images to training / validation / testing.
        generate_node21(ds, n_images=600, image_size=256, positive_fraction=0.5, seed=seed,
                        nodule_contrast=(45.0, 80.0))
    datalist = node21_datalist(ds, val_fraction=0.15, test_fraction=0.15, seed=seed)
    test_list = write_datalist(datalist, data_root / "datalist.json")
    return {"dataset_dir": str(ds), "inference": {"input": str(test_list)}}


def _cxr_lesion_tiny(root: Path) -> tuple[dict, dict]:
    from medbundle.detection.synthetic_cxr import generate_node21

    data = root / "NODE21"
    generate_node21(data, n_images=12, image_size=64, positive_fraction=0.5, seed=0)
    return {"dataset_dir": str(data)}, {"dataset_dir": str(data / "images")}


def _cxr_lesion_label_data(root: Path) -> dict[str, Path]:
    from medbundle.detection.synthetic_cxr import generate_node21

    data = root / "NODE21"
    generate_node21(data, n_images=16, image_size=64, positive_fraction=0.5, seed=1, nodule_contrast=(60.0, 90.0))
    return {"dataset_dir": data}


def _cxr_lesion_study(studies: Path, data: Mapping[str, Any]) -> str:
    """The first NODE21 image as an 8-bit PNG (what a viewer exports; MONAI Label's datastore lists PNG)."""
    import numpy as np
    from PIL import Image

    from medbundle.io.metaimage import read_mhd

    arr, _ = read_mhd(sorted((Path(data["dataset_dir"]) / "images").glob("*.mha"))[0])
    pic = np.asarray(arr, dtype=np.float64).T  # (x, y) -> rows = y
    pic = np.round(255 * (pic - pic.min()) / max(float(np.ptp(pic)), 1e-6)).astype(np.uint8)
    Image.fromarray(pic).save(studies / "cxr_lesion_case.png")
    return "cxr_lesion_case"


_CXR_NET_KEYS = ("image_size", "backbone", "fpn_channels", "anchor_sizes", "aspect_ratios", "detector_kwargs")


def _cxr_lesion_verify() -> VerifyProfile:
    small = _demo_overlay_values(CXR_LESIONS, _CXR_NET_KEYS)
    return VerifyProfile(_cxr_lesion_tiny, net_overrides=small, export_overrides=small,
                         workflow_overrides={"cache_rate": 0.0, **small}, example_shape=(1, 1, 256, 256),
                         note="Faster R-CNN with the demo overlay's small backbone "
                         + ", ".join(f"{k}={small[k]}" for k in ("backbone", "fpn_channels", "image_size")
                                     if k in small)
                         + " (published: ResNet-50-FPN at 1024 px)")


register(Recipe(
    name=CXR_LESIONS,
    demo_data=_cxr_lesion_demo,
    headline=("sens_at_1fp", "FROC sensitivity at 1 FP/image (test)"),
    target=0.85,
    extra=[("auroc", "image-level AUROC"), ("sens_at_quarter_fp", "sens. 1/4 FP/image"), ("froc", "mean FROC sens."),
           ("ap50", "AP50"), ("map", "AP@[.5:.95]")],
    verify=_cxr_lesion_verify,
    label=LabelDemo(
        common={"image_size": 64, "anchor_sizes": [[4], [8], [16], [32], [64]],
                "box_selector": {"score_thresh": 0.0, "nms_thresh": 0.3, "detections_per_img": 20}},
        train={"num_epochs": 1, "val_interval": 1, "num_workers": 0, "batch_size": 2},
        make_data=_cxr_lesion_label_data, study=_cxr_lesion_study),
))


# ------------------------------------------------------------------------------------------------- slides
SLIDES = "wsi_mil_classification"


def _slides_demo(data_root: Path, seed: int = 0) -> dict[str, Any]:
    try:
        import openslide  # noqa: F401
        import tifffile  # noqa: F401
    except (ImportError, OSError) as e:
        raise RuntimeError(f'the whole-slide demo needs the wsi extra ({e}); pip install -e ".[wsi]"') from e
    from medbundle.io.datalist import write_datalist
    from medbundle.pathology.adapters import camelyon16_datalist
    from medbundle.pathology.synthetic import generate_camelyon16

    ds = data_root / "camelyon16"
    if not (ds / "testing" / "reference.csv").is_file():
        # 32 training slides (6 of them become validation), 20 held-out test slides, 1.0 um/px at level 0
        generate_camelyon16(ds, n_train_normal=16, n_train_tumor=16, n_test_normal=10, n_test_tumor=10, size=2560,
                            mpp=1.0, seed=seed)
    datalist = write_datalist(camelyon16_datalist(ds, val_fraction=0.2, seed=seed), data_root / "datalist.json")
    return {"dataset_dir": str(ds), "datalist_file": str(datalist), "inference": {"input": str(datalist)}}


def _slides_tiny(root: Path) -> tuple[dict, dict]:
    from medbundle.io.datalist import write_datalist
    from medbundle.pathology.adapters import camelyon16_datalist
    from medbundle.pathology.synthetic import generate_camelyon16

    data = root / "camelyon16"
    generate_camelyon16(data, n_train_normal=2, n_train_tumor=2, n_test_normal=1, n_test_tumor=1, size=512,
                        mpp=1.0, seed=0)
    dl = write_datalist(camelyon16_datalist(data, val_fraction=0.5, seed=0), root / "wsi_datalist.json")
    return ({"dataset_dir": str(data), "datalist_file": str(dl)},
            {"dataset_dir": str(data / "testing" / "images"), "datalist_file": str(dl)})


def _slides_label_data(root: Path) -> dict[str, Path]:
    from medbundle.io.datalist import write_datalist
    from medbundle.pathology.adapters import camelyon16_datalist
    from medbundle.pathology.synthetic import generate_camelyon16

    data = root / "camelyon16"
    generate_camelyon16(data, n_train_normal=4, n_train_tumor=4, n_test_normal=2, n_test_tumor=2, size=768,
                        mpp=1.0, seed=5)
    dl = write_datalist(camelyon16_datalist(data, val_fraction=0.25, seed=0), root / "wsi_datalist.json")
    return {"dataset_dir": data, "datalist_file": Path(dl)}


def _slides_study(studies: Path, data: Mapping[str, Any]) -> str:
    shutil.copy(sorted((Path(data["dataset_dir"]) / "testing" / "images").glob("*.tif"))[0], studies / "wsi_case.tif")
    return "wsi_case"


register(Recipe(
    name=SLIDES,
    demo_data=_slides_demo,
    headline=("slide_auroc", "slide AUROC (test)"),
    target=0.90,
    extra=[("sensitivity", "sensitivity"), ("specificity", "specificity"),
           ("attention_top_k_in_tumour_fraction", "top-k attention in tumour"),
           ("attention_chance_fraction", "chance (tumour share of patches)")],
    verify=VerifyProfile(_slides_tiny, workflow_overrides={"cache_rate": 0.0}, example_shape=(9, 3, 64, 64),
                         note="ResNet18 patch CNN + attention MIL as published"),
    label=LabelDemo(common={"patch_size": 32, "bag_size": 16}, train={"num_epochs": 2, "val_interval": 1},
                    make_data=_slides_label_data, study=_slides_study),
))
