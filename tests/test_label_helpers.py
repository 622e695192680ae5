"""Unit tests of the MONAI Label helpers that run without MONAI Label (medbundle.monailabel.app, transforms.label)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medbundle.bundle import bundle_dir
from medbundle.monailabel.app import merged_config, prepare_model_dir
from medbundle.monailabel.transforms import ClassScoresd, DetectionResultd, StringItemsAsided


def test_class_scores_survive_a_spatial_restore_lookup():
    image = MetaTensor(torch.zeros(1, 48, 48), meta={"spatial_shape": np.array([96, 96]), "filename_or_obj": "a.png"})
    data = {"image": image, "image_meta_dict": {"spatial_shape": np.array([96, 96])}, "pred": torch.tensor([0.2, 0.9])}
    out = ClassScoresd(keys="pred")(data)
    assert isinstance(out["pred"], MetaTensor) and torch.equal(out["pred"].as_tensor(), torch.tensor([0.2, 0.9]))
    assert "spatial_shape" not in out["image"].meta and "spatial_shape" not in out["image_meta_dict"]
    assert out["image"].meta["filename_or_obj"] == "a.png"
    assert "spatial_shape" in image.meta  # the caller's image is untouched
    assert out["image"].data_ptr() == image.data_ptr()


def test_string_items_set_aside_and_restored():
    data = {"image": torch.zeros(1, 2, 2, 2), "image_path": "/x/a.nii.gz", "image_meta_dict": {}, "label": "keep"}
    aside = StringItemsAsided(keys="image")(data)
    assert "image_path" not in aside and aside["_image_path"] == "/x/a.nii.gz" and aside["label"] == "keep"
    back = StringItemsAsided(keys="image", restore=True)(aside)
    assert back["image_path"] == "/x/a.nii.gz" and "_image_path" not in back


def test_detection_result_sorted_with_world_boxes():
    image = MetaTensor(torch.zeros(1, 8, 8, 8), affine=torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0])))
    data = {"image": image, "box": torch.tensor([[0.0, 0, 0, 2, 2, 2], [1, 1, 1, 3, 5, 7]]),
            "label": torch.tensor([0, 0]), "label_scores": torch.tensor([0.1, 0.8])}
    res = DetectionResultd()(data)["result"]
    assert res["score"] == pytest.approx([0.8, 0.1])
    assert res["box"][0] == [1, 1, 1, 3, 5, 7]
    assert res["box_world"][0][3:] == pytest.approx([4.0, 8.0, 18.0])  # sizes in mm
    assert res["label"] == [0, 0]


def test_merged_config_applies_overlay_and_nested_overrides(tmp_path):
    cfg = bundle_dir("chest_xray_classification") / "configs"
    merged = merged_config(cfg / "inference.json", [cfg / "demo.json"],
                           {"image_size": 48, "network_def#spatial_dims": 2})
    assert merged["image_size"] == 48 and merged["save_gradcam"] is True
    assert merged["network_def"]["spatial_dims"] == 2


def test_prepare_model_dir_writes_merged_configs_and_labels(tmp_path):
    work = tmp_path / "work"
    (work / "models").mkdir(parents=True)
    (work / "models" / "model.pt").write_bytes(b"weights")
    dest = prepare_model_dir(work, tmp_path / "model", "ct_volume_classification",
                             overrides={"class_names": ["normal", "consolidation"]})
    inf = json.loads((dest / "configs" / "inference.json").read_text())
    assert inf["class_names"] == ["normal", "consolidation"] and inf["resnet_depth"] == 10  # demo overlay
    meta = json.loads((dest / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "normal", "1": "consolidation"}
    assert (dest / "models" / "model.pt").read_bytes() == b"weights"
    assert not (dest / "configs" / "demo.json").exists()
    with pytest.raises(FileNotFoundError, match="no trained checkpoint"):
        prepare_model_dir(tmp_path / "nothing", tmp_path / "model", "ct_volume_classification")


def test_served_bundles_read_one_file_series_folders_of_the_dicomweb_datastore(tmp_path):
    """MONAI Label's DICOMweb datastore hands a radiograph over as a folder holding its one instance: the served
    chest config reads it as that file; a CT series folder still reaches the volume reader whole."""
    import shutil

    from monai.bundle import ConfigParser
    from monai.transforms import LoadImage

    from medbundle.monailabel.dicomweb import dicomweb_server_env
    from medbundle.xray.synthetic import write_xray_dicom

    work = tmp_path / "work"
    (work / "models").mkdir(parents=True)
    (work / "models" / "model.pt").write_bytes(b"weights")
    dest = prepare_model_dir(work, tmp_path / "model", "chest_xray_classification")
    inf = json.loads((dest / "configs" / "inference.json").read_text())
    assert inf["readers"] == "$medbundle.monailabel.dicomweb.series_folder_readers(medbundle.io.dicom.xray_readers())"
    assert "$import medbundle.monailabel.dicomweb" in inf["imports"]
    parser = ConfigParser(inf)
    readers = parser.get_parsed_content("readers")

    picture = np.tile(np.arange(32, dtype=np.uint8) * 8, (24, 1))
    series = tmp_path / "series"
    series.mkdir()
    path = write_xray_dicom(series / "00000.dcm", picture, variant=1)  # MONOCHROME1, windowed
    from_folder = LoadImage(reader=readers, image_only=True)(str(series))
    from_file = LoadImage(reader=readers, image_only=True)(str(path))
    assert from_folder.shape == (32, 24)  # (columns, rows), as the chest bundle reads a file
    np.testing.assert_array_equal(from_folder.numpy(), from_file.numpy())
    np.testing.assert_allclose(from_folder.numpy().T, picture, atol=0.5)  # window and inversion applied
    shutil.copy(path, series / "00001.dcm")  # two files: not one radiograph; the folder is passed on unchanged
    assert readers[0].verify_suffix(str(series)) is False
    assert readers[0].verify_suffix(str(path)) is True

    env = dicomweb_server_env(tmp_path / "cache", base={})
    assert env == {"MONAI_LABEL_DICOMWEB_CONVERT_TO_NIFTI": "false",
                   "MONAI_LABEL_DICOMWEB_CACHE_PATH": str((tmp_path / "cache").resolve()),
                   "MONAI_LABEL_DICOMWEB_SEARCH_FILTER": "{}"}
