"""DICOM whole-slide images (VL Whole Slide Microscopy): the synthetic writer, reading through OpenSlide, the patch
grid and bag pixels against the TIFF of the same slide, bad DICOM, the DICOM Camelyon16 and PANDA layouts, and the
slide bundle's training and inference on DICOM slides with the DICOM SR.

Slides are tiny (768 x 1024 px at 1 um/px, two levels). All but the bundle test also run under pydicom 2.4
(``.venv-label/bin/python -m pytest tests/test_wsi_dicom.py -k "not bundle"``).
"""

from __future__ import annotations

import csv
import shutil
import subprocess

import numpy as np
import pytest

pytest.importorskip("tifffile")
pytest.importorskip("openslide")
pydicom = pytest.importorskip("pydicom")

from medbundle.io.dicom_write import new_dataset, save_dicom  # noqa: E402
from medbundle.pathology.dicom_wsi import VL_WSI_SOP_CLASS, dicom_slide_levels, write_dicom_wsi  # noqa: E402
from medbundle.pathology.reader import (  # noqa: E402
    SlideReadError,
    build_slide_grid,
    open_slide,
    read_patches,
    slide_geometry,
)
from medbundle.pathology.synthetic import make_slide, write_synthetic_slide  # noqa: E402

GRID = {"patch_size": 32, "mpp": 2.0, "mask_mpp": 16.0}


def dciodvfy_errors(path) -> list[str]:
    """The ``Error`` lines dicom3tools' validator prints for ``path`` (the test is skipped without it)."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")]


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    """One synthetic tumour slide as a TIFF, an uncompressed DICOM series and a JPEG DICOM series."""
    root = tmp_path_factory.mktemp("wsi_dicom")
    s = make_slide(768, 1024, mpp=1.0, seed=11, tumour=True, tumour_radius_um=(150.0, 200.0))
    tif = write_synthetic_slide(s, root / "slide.tif")
    raw = write_dicom_wsi(root / "raw", s.height, s.width, s.mpp, s.render, compression="none", slide_id="S-11",
                          patient={"id": "PAT-RAW-1", "name": "Raw"})
    jpg = write_dicom_wsi(root / "jpeg", s.height, s.width, s.mpp, s.render, compression="jpeg", slide_id="S-11",
                          patient={"id": "PAT-JPG-1", "name": "Jpeg"}, uid_seed="S-11 as JPEG")
    return root, tif, raw, jpg


def test_writer_makes_a_valid_vl_whole_slide_series(slide):
    _, _, raw, jpg = slide
    for files, syntax, photometric in ((raw, "1.2.840.10008.1.2.1", "RGB"),
                                       (jpg, "1.2.840.10008.1.2.4.50", "YBR_FULL_422")):
        assert len(files) == 2
        headers = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files]
        for i, ds in enumerate(headers):
            assert dciodvfy_errors(files[i]) == []
            assert ds.SOPClassUID == VL_WSI_SOP_CLASS and ds.Modality == "SM"
            assert ds.file_meta.TransferSyntaxUID == syntax and ds.PhotometricInterpretation == photometric
            assert ds.DimensionOrganizationType == "TILED_FULL"
            assert list(ds.ImageType) == (["ORIGINAL", "PRIMARY", "VOLUME", "NONE"] if i == 0
                                          else ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"])
            d = 2 ** i
            assert (ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns) == (768 // d, 1024 // d)
            assert ds.NumberOfFrames == -(-768 // d // 256) * -(-1024 // d // 256)
            spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
            assert [float(v) for v in spacing] == pytest.approx([0.001 * d, 0.001 * d])
        # one study, series and frame of reference; an instance per level
        for k in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "PatientID", "ContainerIdentifier"):
            assert len({str(getattr(ds, k)) for ds in headers}) == 1, k
        assert len({ds.SOPInstanceUID for ds in headers}) == 2


def test_openslide_reads_the_series_as_the_tiff(slide):
    _, tif, raw, jpg = slide
    with open_slide(tif) as (rd, wsi):
        g_tif = slide_geometry(rd, wsi)
        full = rd.get_data(wsi, location=(0, 0), size=g_tif.sizes[0], level=0)[0]
    for source in (raw[0].parent, raw[0], raw[1]):  # the folder, level 0, or another level of the series
        with open_slide(source) as (rd, wsi):
            g = slide_geometry(rd, wsi)
            assert g.sizes == g_tif.sizes == [(768, 1024), (384, 512)]
            assert g.downsamples == [1.0, 2.0] and g.mpp == pytest.approx(1.0)
            assert np.array_equal(rd.get_data(wsi, location=(0, 0), size=g.sizes[0], level=0)[0], full)
    with open_slide(jpg[0].parent) as (rd, wsi):
        lossy = rd.get_data(wsi, location=(0, 0), size=(768, 1024), level=0)[0].astype(np.int16)
    diff = np.abs(lossy - np.asarray(full, np.int16))
    assert 0 < diff.mean() < 4.0  # JPEG at quality 95: close, not equal
    # highdicom (pydicom 3 only) reads the same level-0 pixels back
    if int(pydicom.__version__.split(".")[0]) >= 3:
        hd = pytest.importorskip("highdicom")
        matrix = hd.imread(str(raw[0])).get_total_pixel_matrix()
        assert np.array_equal(matrix, np.moveaxis(np.asarray(full), 0, -1))


def test_grid_and_bag_pixels_match_the_tiff(slide, tmp_path):
    _, tif, raw, jpg = slide
    ref = build_slide_grid(tif, **GRID, cache_dir=tmp_path / "c")
    assert len(ref) > 10
    with open_slide(tif) as (rd, wsi):
        bag = read_patches(rd, wsi, ref)
    # OpenSlide, and the tifffile backend (medbundle's DicomWSIReader: pydicom headers, imagecodecs frames)
    for backend in ("openslide", "tifffile"):
        for source in (raw[0].parent, raw[0], jpg[0].parent):
            grid = build_slide_grid(source, backend=backend, **GRID, cache_dir=tmp_path / backend)
            assert grid.path == str(source.resolve())
            assert np.array_equal(grid.coords, ref.coords)
            assert (grid.level, grid.read_size) == (ref.level, ref.read_size)
            with open_slide(source, backend) as (rd, wsi):
                assert type(rd).__name__ == {"openslide": "OpenSlideWSIReader", "tifffile": "DicomWSIReader"}[backend]
                pixels = read_patches(rd, wsi, grid).astype(np.int16)
            if "jpeg" in (source.name, source.parent.name):
                assert np.abs(pixels - bag).mean() < 4.0
            else:
                assert np.array_equal(pixels, bag)
        # the coordinate cache holds one entry per slide as given (folder and level-0 file are two entries)
        assert len(list((tmp_path / backend).glob("*.npz"))) == 3


def test_both_backends_decode_the_same_dicom_pixels(slide):
    """OpenSlide (libdicom, libjpeg) and DicomWSIReader (pydicom, imagecodecs) read the same JPEG frames alike, and
    the same regions across tile edges and past the slide's edge (0 there)."""
    _, _, _, jpg = slide
    with open_slide(jpg[0], "openslide") as (ro, wo), open_slide(jpg[0], "tifffile") as (rt, wt):
        assert slide_geometry(ro, wo).sizes == slide_geometry(rt, wt).sizes
        assert slide_geometry(rt, wt).mpp == pytest.approx(1.0)
        for loc, size, level in (((0, 0), (768, 1024), 0), ((250, 500), (20, 30), 0), ((0, 0), (384, 512), 1),
                                 ((700, 1000), (100, 100), 0)):
            a = ro.get_data(wo, location=loc, size=size, level=level)[0].astype(np.int16)
            b = rt.get_data(wt, location=loc, size=size, level=level)[0].astype(np.int16)
            assert a.shape == b.shape == (3, *size)
            assert np.abs(a - b).max() <= 2, (loc, size, level)  # decoders may round the colour transform apart
        assert not rt.get_data(wt, location=(700, 1000), size=(100, 100), level=0)[0][:, 80:, :].any()


def _copy(src_files, dst):
    dst.mkdir(parents=True)
    for f in src_files:
        shutil.copy(f, dst / f.name)
    return dst


def test_bad_dicom_gets_one_clear_line(slide, tmp_path):
    _, _, raw, _ = slide
    # a DICOM file that is not a whole-slide image
    ct = new_dataset("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4")
    ct.StudyInstanceUID, ct.SeriesInstanceUID = "1.2.3.5", "1.2.3.6"
    (tmp_path / "ct").mkdir()
    save_dicom(ct, tmp_path / "ct" / "slice.dcm")
    cases = {
        "ct/slice.dcm": "not a DICOM whole-slide image: SOP class 1.2.840.10008.5.1.4.1.1.2 (CT Image Storage)",
        "ct": "no VL Whole Slide Microscopy slide level",
    }
    # level 0 missing: only the resampled level is left
    _copy(raw[1:], tmp_path / "no_level0")
    cases["no_level0"] = "level 0 of slide series"
    # a TILED_FULL level with frames missing
    trunc = _copy(raw, tmp_path / "truncated")
    ds = pydicom.dcmread(str(trunc / "level_1.dcm"))
    ds.NumberOfFrames = 1
    ds.PixelData = ds.PixelData[: 256 * 256 * 3]
    save_dicom(ds, trunc / "level_1.dcm")
    cases["truncated/level_0.dcm"] = "needs 4 frames, the file has 1"
    (tmp_path / "garbage.dcm").write_bytes(b"not dicom at all")
    cases["garbage.dcm"] = "not a readable DICOM file"
    for rel, expected in cases.items():
        with pytest.raises(SlideReadError) as e:
            build_slide_grid(tmp_path / rel, **GRID)
        msg = str(e.value)
        assert expected in msg and "\n" not in msg, (rel, msg)
        assert str(tmp_path) in msg
    with pytest.raises(SlideReadError, match="level 0 of slide series"):
        build_slide_grid(tmp_path / "no_level0", backend="tifffile", **GRID)
    assert len(dicom_slide_levels(raw[0].parent)) == 2


def test_sr_source_is_the_slide_folder_unless_it_holds_other_series(slide, tmp_path):
    from medbundle.pathology.dicom_wsi import dicom_slide_source

    _, _, raw, jpg = slide
    assert dicom_slide_source(raw[1]) == raw[0].parent  # one slide per folder: every level (and label) instance
    mixed = _copy(raw, tmp_path / "mixed")
    shutil.copy(jpg[1], mixed / "other_level_1.dcm")  # another slide's level in the same folder
    assert dicom_slide_source(mixed / "level_1.dcm") == mixed / "level_0.dcm"


def test_camelyon16_and_panda_layouts_as_dicom_have_the_same_slides_and_labels(tmp_path):
    from medbundle.pathology.adapters import camelyon16_datalist, panda_datalist
    from medbundle.pathology.synthetic import generate_camelyon16, generate_panda

    kw = dict(n_train_normal=1, n_train_tumor=1, n_test_normal=1, n_test_tumor=1, size=512, seed=3,
              tumour_radius_um=(120.0, 160.0))
    generate_camelyon16(tmp_path / "tif", **kw)
    summary = generate_camelyon16(tmp_path / "dcm", format="dicom", dicom_compression="none", **kw)
    a, b = camelyon16_datalist(tmp_path / "tif", val_fraction=0.0), camelyon16_datalist(tmp_path / "dcm",
                                                                                       val_fraction=0.0)
    for split in ("training", "testing"):
        assert [(it["slide_id"], it["label"]) for it in a[split]] == [(it["slide_id"], it["label"]) for it in b[split]]
        for ta, tb in zip(a[split], b[split]):
            assert tb["image"].endswith("/" + ta["slide_id"]) and ta.get("annotation", "x")[-8:] == \
                tb.get("annotation", "x")[-8:]
            ga, gb = (build_slide_grid(t["image"], **GRID) for t in (ta, tb))
            assert np.array_equal(ga.coords, gb.coords)
    ids = {pydicom.dcmread(str(p), stop_before_pixels=True).PatientID
           for p in (tmp_path / "dcm").rglob("level_0.dcm")}
    assert len(ids) == 4 and all(i.startswith("PAT") for i in ids)
    assert all(s["path"].endswith(s["name"]) for s in summary["slides"])
    # PANDA: train_images/<image_id>/ slide folders, the same ids and grades
    pk = dict(n_slides=3, size=(512, 768), seed=2)
    generate_panda(tmp_path / "ptif", **pk)
    generate_panda(tmp_path / "pdcm", format="dicom", **pk)
    pa, pb = (panda_datalist(tmp_path / x, val_fraction=0.0, test_fraction=0.0)["training"] for x in ("ptif", "pdcm"))
    assert [(i["slide_id"], i["label"]) for i in pa] == [(i["slide_id"], i["label"]) for i in pb]
    assert [i["label"] for i in pb] == [0, 1, 2]
    assert all(it["image"].endswith("train_images/" + it["slide_id"]) for it in pb)
    assert len(dicom_slide_levels(pb[0]["image"])) == 2


# ---------------------------------------------------------------------------------------------- bundle + SR
def _sr_findings(path) -> dict[str, tuple[float, bool]]:
    """``{class (lower case): (probability, present)}`` read back from an SR with highdicom."""
    hd = pytest.importorskip("highdicom")
    from sr_readback import class_findings

    return {name: (p, call == "Present") for name, (p, call) in class_findings(hd.sr.srread(str(path))).items()}


def test_slide_bundle_trains_on_dicom_slides_infers_and_writes_the_sr(tmp_path):
    pytest.importorskip("highdicom")
    from conftest import BUNDLES, config_list, run_bundle

    from medbundle.io.datalist import write_datalist
    from medbundle.pathology.adapters import camelyon16_datalist
    from medbundle.pathology.synthetic import generate_camelyon16

    cfg = BUNDLES / "wsi_mil_classification" / "configs"
    small = {"patch_size": 32, "bag_size": 16, "patch_mpp": 2.0}
    common = ["--meta_file", str(cfg / "metadata.json"), "--logging_file", str(cfg / "logging.conf"),
              *[f"--{k}={v}" for k, v in small.items()]]
    kw = dict(n_train_normal=2, n_train_tumor=2, n_test_normal=1, n_test_tumor=1, size=768, seed=7,
              tumour_radius_um=(150.0, 250.0), atypia_range=(0.8, 1.0), lymphoid=(0.0, 0.0))
    generate_camelyon16(tmp_path / "tif", **kw)
    generate_camelyon16(tmp_path / "dcm", format="dicom", **kw)  # JPEG tiles, as scanners write them
    # training reads the DICOM layout through the adapter (slide folders) like the TIFF one
    datalist = write_datalist(camelyon16_datalist(tmp_path / "dcm", val_fraction=0.5, seed=0), tmp_path / "dl.json")
    work = tmp_path / "bundle"
    proc = run_bundle(["run", "training", "--config_file", config_list(cfg / "train.json", cfg / "demo.json"),
                       *common, "--bundle_root", str(work), "--dataset_dir", str(tmp_path / "dcm"),
                       "--datalist_file", str(datalist), "--num_epochs", "2", "--val_interval", "1"])
    assert "val_slide_auroc" in proc.stdout + proc.stderr and (work / "models" / "model.pt").is_file()
    assert sorted(p.name.rsplit("_", 1)[0] for p in (work / "cache" / "coords").glob("*.npz")) == \
        ["normal_001", "normal_002", "tumor_001", "tumor_002"]
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(tmp_path / "tif" / "training" / "tumor" / "tumor_001.tif", slides / "tumor_001.tif")
    shutil.copytree(tmp_path / "dcm" / "training" / "tumor" / "tumor_001", slides / "tumor_001_dicom")
    shutil.copytree(tmp_path / "dcm" / "testing" / "images" / "test_001", slides / "test_001")
    bad = slides / "not_a_slide"  # a DICOM folder that is no whole-slide image
    bad.mkdir()
    ct = new_dataset("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4")
    save_dicom(ct, bad / "ct.dcm")
    out = tmp_path / "pred"
    proc = run_bundle(["run", "--config_file", config_list(cfg / "inference.json", cfg / "demo.json"), *common,
                       "--bundle_root", str(work), "--input", str(slides), "--output_dir", str(out),
                       "--write_sr", "True"])
    log = proc.stdout + proc.stderr
    rows = {r["file"].rsplit("/", 1)[-1]: r for r in csv.DictReader(open(out / "predictions.csv"))}
    assert sorted(rows) == ["test_001", "tumor_001.tif", "tumor_001_dicom"]
    skipped = list(csv.DictReader(open(out / "skipped.csv")))
    assert [r["file"].rsplit("/", 1)[-1] for r in skipped] == ["not_a_slide"]
    assert "no VL Whole Slide Microscopy slide level" in skipped[0]["reason"]
    # the DICOM slide (JPEG tiles) and the TIFF of the same slide: the same bag, nearly the same probability
    t, d = rows["tumor_001.tif"], rows["tumor_001_dicom"]
    assert t["n_patches"] == d["n_patches"] and int(t["n_patches"]) > 10
    assert float(d["tumor"]) == pytest.approx(float(t["tumor"]), abs=0.01)
    top = list(csv.DictReader(open(out / "top_patches.csv")))
    top_t = [r["patch_index"] for r in top if r["file"].endswith("tumor_001.tif")]
    top_d = [r["patch_index"] for r in top if r["file"].endswith("tumor_001_dicom")]
    assert len(set(top_t[:4]) & set(top_d)) >= 3  # the most attended patches are the same ones
    # one SR per DICOM slide, none for the TIFF
    assert sorted(p.name for p in (out / "sr").iterdir()) == ["test_001.dcm", "tumor_001_dicom.dcm"]
    for name in ("tumor_001_dicom", "test_001"):
        path = out / "sr" / f"{name}.dcm"
        assert dciodvfy_errors(path) == []
        found = _sr_findings(path)
        r = rows[name]
        assert {c: v[0] for c, v in found.items()} == {c: float(r[c]) for c in ("normal", "tumor")}
        assert [c for c, (_, present) in found.items() if present] == [r["predicted"]]
        sr = pydicom.dcmread(str(path))
        levels = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in sorted((slides / name).glob("*.dcm"))]
        assert sr.PatientID == levels[0].PatientID and sr.StudyInstanceUID == levels[0].StudyInstanceUID
        (study,) = sr.CurrentRequestedProcedureEvidenceSequence
        (series,) = study.ReferencedSeriesSequence
        assert series.SeriesInstanceUID == levels[0].SeriesInstanceUID
        assert {i.ReferencedSOPInstanceUID for i in series.ReferencedSOPSequence} == \
            {ds.SOPInstanceUID for ds in levels}
        # the patient identity is in the SR only: not in the tables, the JSON or the log
        for text in (log, *(p.read_text() for p in out.iterdir() if p.suffix in (".csv", ".json"))):
            assert str(levels[0].PatientID) not in text and str(levels[0].PatientName) not in text
    # the tifffile backend reads the DICOM slide in Python (DicomWSIReader): the same probability
    out_t = tmp_path / "pred_tifffile"
    run_bundle(["run", "--config_file", config_list(cfg / "inference.json", cfg / "demo.json"), *common,
                "--bundle_root", str(work), "--input", str(slides / "tumor_001_dicom"), "--output_dir", str(out_t),
                "--wsi_backend", "tifffile", "--save_maps", "False"])
    (row_t,) = csv.DictReader(open(out_t / "predictions.csv"))
    assert row_t["n_patches"] == d["n_patches"] and float(row_t["tumor"]) == pytest.approx(float(d["tumor"]), abs=1e-3)
