"""Slides to bags: synthetic pyramidal TIFF, both reader backends, tissue detection, patch grid, cache,
and the Camelyon16 / PANDA adapters."""

from __future__ import annotations

import csv
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest

pytest.importorskip("tifffile")
openslide = pytest.importorskip("openslide")

from medbundle.pathology.adapters import camelyon16_datalist, panda_datalist, points_in_annotations, read_asap_xml  # noqa: E402
from medbundle.pathology.reader import (  # noqa: E402
    NoTissueError,
    SlideReadError,
    build_slide_grid,
    open_slide,
    read_patches,
    slide_geometry,
)
from medbundle.pathology.synthetic import make_slide, write_asap_xml, write_synthetic_slide  # noqa: E402
from medbundle.pathology.tissue import TissueParams, otsu_threshold, tissue_mask  # noqa: E402
from medbundle.pathology.transforms import TissueGridd  # noqa: E402


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("wsi")
    tumour = make_slide(1024, 1536, mpp=0.5, seed=11, tumour=True, n_tumours=2, tumour_radius_um=(60.0, 90.0),
                        pen_marks=1, specks=8)
    empty = make_slide(768, 768, mpp=0.5, seed=12, tissue=False, pen_marks=1, specks=10)
    plain = make_slide(1024, 1024, mpp=0.5, seed=13, holes=False, pen_marks=0, specks=0)
    paths = {}
    for name, s in (("tumour", tumour), ("empty", empty), ("plain", plain)):
        paths[name] = write_synthetic_slide(s, root / f"{name}.tif")
    return root, paths, {"tumour": tumour, "empty": empty, "plain": plain}


def test_synthetic_slide_is_a_pyramidal_tiff_openslide_reads_with_mpp(slides):
    _, paths, _ = slides
    s = openslide.OpenSlide(str(paths["tumour"]))
    assert s.properties["openslide.vendor"] == "generic-tiff"
    assert s.level_dimensions == ((1536, 1024), (768, 512), (384, 256))
    assert s.level_downsamples == (1.0, 2.0, 4.0)
    assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.5)
    assert float(s.properties["openslide.mpp-y"]) == pytest.approx(0.5)
    s.close()
    for backend in ("openslide", "tifffile"):
        with open_slide(paths["tumour"], backend) as (reader, wsi):
            g = slide_geometry(reader, wsi)
        assert g.sizes == [(1024, 1536), (512, 768), (256, 384)]
        assert g.downsamples == [1.0, 2.0, 4.0]
        assert g.mpp == pytest.approx(0.5)
        assert g.level_mpp(2) == pytest.approx(2.0)


def test_otsu_threshold_maximises_between_class_variance():
    rng = np.random.default_rng(0)
    v = np.clip(np.concatenate([rng.normal(0.1, 0.03, 3000), rng.normal(0.6, 0.08, 1000)]), 0, 1)
    t = otsu_threshold(v)
    # hand computation: between-class variance of every cut at the 256 bin edges
    edges = np.linspace(0, 1, 257)[1:-1]
    best = max(edges, key=lambda c: (v <= c).mean() * (v > c).mean() * (v[v <= c].mean() - v[v > c].mean()) ** 2
               if 0 < (v <= c).sum() < v.size else -1)
    assert t == pytest.approx(best, abs=1 / 256 + 1e-9)
    assert 0.15 < t < 0.45  # between the modes (0.1 and 0.6)


def test_tissue_mask_area_matches_the_drawn_tissue(slides):
    _, paths, truth = slides
    plain = truth["plain"]
    with open_slide(paths["plain"], "openslide") as (reader, wsi):
        thumb = np.moveaxis(np.asarray(reader.get_data(wsi, level=2)[0]), 0, -1)
    res = tissue_mask(thumb, pixel_um=2.0)
    # the slide was drawn from a tissue field on a 16 x 16 px design grid; its area at alpha 0.5 is the truth
    expected = float((plain.tissue >= 0.5).mean())
    assert res.mask.mean() == pytest.approx(expected, rel=0.04)
    assert res.method == "otsu" and 0.07 <= res.threshold < 0.25


def test_tissue_mask_drops_ink_and_specks_and_fills_small_holes(slides):
    _, paths, truth = slides
    s = truth["tumour"]
    with open_slide(paths["tumour"], "openslide") as (reader, wsi):
        thumb = np.moveaxis(np.asarray(reader.get_data(wsi, level=2)[0]), 0, -1)  # 2 um/px, 4 px per design cell
    res = tissue_mask(thumb, pixel_um=2.0)
    rep = lambda f: np.kron(f, np.ones((4, 4)))[: thumb.shape[0], : thumb.shape[1]]  # noqa: E731 design -> level 2
    ink = rep(s.ink_alpha) > 0.5
    glass = rep(s.tissue) < 0.05
    assert ink.any()
    # ink and specks on glass are not tissue (pen over tissue is excluded too)
    assert res.mask[ink & glass].mean() < 0.01
    assert res.mask[ink].mean() < 0.2
    assert res.removed_ink_px > 0
    # with a permissive saturation threshold, ink and specks pass the threshold: the ink/dark filters and the
    # speck removal are what keep them out
    low = dict(method="saturation", saturation_threshold=0.05)
    raw = tissue_mask(thumb, pixel_um=2.0, params=TissueParams(min_area_um2=0, max_hole_um2=0, exclude_ink=False,
                                                               dark_value=0.0, grey_value=0.0, **low))
    assert raw.mask[ink & glass].mean() > 0.5
    cleaned = tissue_mask(thumb, pixel_um=2.0, params=low)
    assert cleaned.mask[ink & glass].mean() < 0.02
    assert cleaned.mask.sum() == pytest.approx(res.mask.sum(), rel=0.1)
    # tissue holes of up to ~55 um radius are filled (those that open onto the glass stay out)
    body = rep(s.tissue) > 0.999
    assert res.mask[body & ~ink].mean() > 0.97


def test_tissue_mask_exact_area_on_a_drawn_image():
    """Pink tissue 120 x 100 px with a small and a large hole, a blue stroke across it, a speck and a
    grey smudge on the glass: the mask is the tissue, the small hole filled, the large hole, the ink and the
    dirt left out. At 4 um/px: small hole 6 x 6 px = 576 um2 (< 20,000), large hole 40 x 40 px = 25,600 um2."""
    rng = np.random.default_rng(0)
    img = np.full((200, 220, 3), 243, np.uint8) + rng.integers(-3, 4, (200, 220, 3)).astype(np.uint8)
    img[40:160, 50:150] = (230, 160, 200)
    img[60:66, 60:66] = (244, 243, 246)        # small hole: filled
    img[100:140, 90:130] = (244, 243, 246)     # large hole: stays a hole
    img[40:160, 70:74] = (40, 64, 165)         # blue pen across the tissue
    img[10:16, 10:16] = (70, 62, 66)           # dust speck on glass
    img[170:190, 170:200] = (150, 148, 152)    # grey smudge
    img[20:22, 200:202] = (230, 160, 200)      # 2 x 2 px pink debris: smaller than min_area
    res = tissue_mask(img, pixel_um=4.0)
    expected = 120 * 100 - 40 * 40 - 120 * 4
    assert int(res.mask.sum()) == expected
    assert res.mask[62, 62] and not res.mask[120, 110] and not res.mask[100, 71]
    assert not res.mask[:, 150:].any() and not res.mask[:40].any()
    sat = tissue_mask(img, pixel_um=4.0, params={"method": "saturation", "saturation_threshold": 0.2})
    assert int(sat.mask.sum()) == expected and sat.threshold == 0.2


def test_empty_slide_gives_empty_bag_with_clear_message(slides, tmp_path):
    _, paths, _ = slides
    grid = build_slide_grid(paths["empty"], patch_size=32, mpp=1.0, mask_mpp=4.0)
    assert len(grid) == 0 and grid.coords.shape == (0, 2)
    assert str(paths["empty"]) in grid.message and "no tissue found" in grid.message and "bag is empty" in grid.message
    with pytest.raises(NoTissueError, match="empty.tif: no tissue found"):
        build_slide_grid(paths["empty"], patch_size=32, mpp=1.0, mask_mpp=4.0, allow_empty=False)
    with pytest.raises(NoTissueError, match="no tissue found"):
        TissueGridd(patch_size=32, mpp=1.0, mask_mpp=4.0)({"image": str(paths["empty"])})


def test_grid_patches_lie_in_tissue_on_a_regular_grid(slides, tmp_path):
    _, paths, _ = slides
    grid = build_slide_grid(paths["tumour"], patch_size=32, mpp=1.0, mask_mpp=4.0, min_tissue_fraction=0.6)
    assert len(grid) > 20
    assert grid.level == 1 and grid.read_size == 32 and grid.mpp == pytest.approx(1.0)
    side = grid.footprint
    assert side == 64.0  # 32 px at 1 um/px = 64 level-0 px at 0.5 um/px
    assert np.all(grid.coords % 64 == 0)
    assert len({tuple(c) for c in grid.coords}) == len(grid)
    h, w = grid.slide_size
    assert np.all(grid.coords[:, 0] + side <= h) and np.all(grid.coords[:, 1] + side <= w)
    assert np.all(grid.tissue_fraction >= 0.6)
    # each kept patch is at least 60 % tissue in the mask it was chosen from
    ds = grid.thumbnail_downsample
    for (y, x), f in zip(grid.coords, grid.tissue_fraction):
        cell = grid.mask[int(y / ds): int((y + side) / ds), int(x / ds): int((x + side) / ds)]
        assert cell.mean() == pytest.approx(f, abs=1e-6)


@pytest.mark.parametrize(("mpp", "power", "level", "read_size"), [
    (1.0, None, 1, 32),    # exactly level 1
    (0.75, None, 0, 48),   # between levels: read 48 px at level 0, resize to 32
    (2.0, None, 2, 32),
    (None, 10.0, 1, 32),   # 10x -> 1.0 um/px by the 10 / power convention (no objective power in the file)
])
def test_resolution_in_microns_or_power_picks_level_and_read_size(slides, mpp, power, level, read_size):
    _, paths, _ = slides
    g = build_slide_grid(paths["tumour"], patch_size=32, mpp=mpp, power=power, mask_mpp=4.0)
    assert (g.level, g.read_size) == (level, read_size)
    assert g.mpp == pytest.approx(mpp or 10.0 / power)
    with open_slide(paths["tumour"]) as (reader, wsi):
        p = read_patches(reader, wsi, g, [0, len(g) - 1])
    assert p.shape == (2, 3, 32, 32) and p.dtype == np.uint8


@pytest.mark.parametrize("mpp", [0.5, 1.0, 0.75])
def test_openslide_and_tifffile_backends_give_the_same_patches(slides, mpp):
    _, paths, _ = slides
    grids = {b: build_slide_grid(paths["tumour"], patch_size=32, mpp=mpp, backend=b, mask_mpp=4.0)
             for b in ("openslide", "tifffile")}
    np.testing.assert_array_equal(grids["openslide"].coords, grids["tifffile"].coords)
    np.testing.assert_array_equal(grids["openslide"].thumbnail, grids["tifffile"].thumbnail)
    patches = {}
    for b, g in grids.items():
        with open_slide(paths["tumour"], b) as (reader, wsi):
            patches[b] = read_patches(reader, wsi, g)
    assert patches["openslide"].shape[0] == len(grids["openslide"]) > 10
    np.testing.assert_array_equal(patches["openslide"], patches["tifffile"])


def test_tiled_tifffile_reader_decodes_only_the_tiles_a_region_touches(slides):
    import tifffile

    _, paths, _ = slides
    with open_slide(paths["tumour"], "tifffile") as (reader, wsi):
        patch, meta = reader.get_data(wsi, location=(300, 500), size=(40, 70), level=0)
        assert len(reader._tiles._d) == 2  # rows 300-340 in tile row 1, columns 500-570 in tile columns 1-2
        full = tifffile.imread(paths["tumour"], key=0)
        np.testing.assert_array_equal(np.moveaxis(np.asarray(patch), 0, -1), full[300:340, 500:570])
        patch1, _ = reader.get_data(wsi, location=(200, 400), size=(30, 30), level=1)
        np.testing.assert_array_equal(np.moveaxis(np.asarray(patch1), 0, -1),
                                      tifffile.imread(paths["tumour"], key=1)[100:130, 200:230])


def test_coordinate_cache_is_reused_and_invalidated_when_the_slide_changes(slides, tmp_path, monkeypatch):
    import medbundle.pathology.reader as wsi_mod

    _, paths, _ = slides
    cache = tmp_path / "coords"
    g1 = build_slide_grid(paths["plain"], patch_size=32, mpp=1.0, mask_mpp=4.0, cache_dir=cache)
    files = list(cache.glob("*.npz"))
    assert len(files) == 1 and g1.cache_file == str(files[0])

    def no_open(*a, **k):
        raise AssertionError("slide opened although its grid is cached")

    monkeypatch.setattr(wsi_mod, "open_slide", no_open)
    g2 = build_slide_grid(paths["plain"], patch_size=32, mpp=1.0, mask_mpp=4.0, cache_dir=cache)
    np.testing.assert_array_equal(g1.coords, g2.coords)
    np.testing.assert_array_equal(g1.thumbnail, g2.thumbnail)
    assert (g2.level, g2.read_size, g2.mpp) == (g1.level, g1.read_size, g1.mpp)
    with pytest.raises(AssertionError, match="opened"):  # other parameters: another key
        build_slide_grid(paths["plain"], patch_size=32, mpp=1.0, mask_mpp=4.0, cache_dir=cache, min_tissue_fraction=0.9)
    st = os.stat(paths["plain"])
    os.utime(paths["plain"], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file changed: cache miss
    with pytest.raises(AssertionError, match="opened"):
        build_slide_grid(paths["plain"], patch_size=32, mpp=1.0, mask_mpp=4.0, cache_dir=cache)


def test_training_grids_leave_the_thumbnail_in_the_cache_file(slides, tmp_path):
    _, paths, _ = slides
    full = build_slide_grid(paths["plain"], patch_size=32, mpp=1.0, mask_mpp=4.0)
    item = TissueGridd(patch_size=32, mpp=1.0, mask_mpp=4.0, cache_dir=tmp_path, keep_thumbnail=False)(
        {"image": str(paths["plain"]), "label": 0})
    grid = item["grid"]
    assert grid.thumbnail is None and grid.mask is None and item["filename"] == str(paths["plain"])
    thumb, mask = grid.images()
    np.testing.assert_array_equal(thumb, full.thumbnail)
    np.testing.assert_array_equal(mask, full.mask)
    np.testing.assert_array_equal(grid.coords, full.coords)


def test_unreadable_or_unscaled_slides_give_errors_naming_the_file(tmp_path):
    import tifffile

    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00 definitely not a slide")
    for backend in ("openslide", "tifffile"):
        with pytest.raises(SlideReadError, match="broken.tif: cannot be read"):
            build_slide_grid(bad, backend=backend)
    with pytest.raises(SlideReadError, match="missing.tif: slide file not found"):
        build_slide_grid(tmp_path / "missing.tif")
    plain = tmp_path / "no_mpp.tif"
    tifffile.imwrite(plain, np.full((512, 512, 3), 240, np.uint8), tile=(256, 256), photometric="rgb")
    with pytest.raises(SlideReadError, match="no_mpp.tif: no microns-per-pixel"):
        build_slide_grid(plain, backend="tifffile", mpp=0.5)


def test_tifffile_reader_skips_svs_thumbnail_and_reads_aperio_mpp_and_power(tmp_path):
    import tifffile

    from medbundle.pathology.reader import wsi_reader

    path = tmp_path / "aperio_like.svs"
    desc = "Aperio Image Library v12.0.15 \n1024x768 [0,0 1024x768] (256x256) JPEG/RGB Q=70|AppMag = 20|MPP = 0.4990"
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (768, 1024, 3), dtype=np.uint8)
    with tifffile.TiffWriter(path) as tw:
        tw.write(base, tile=(256, 256), photometric="rgb", description=desc, metadata=None)
        tw.write(base[::8, ::8], photometric="rgb", metadata=None)  # stripped thumbnail, as in SVS
        tw.write(base[::4, ::4], tile=(256, 256), photometric="rgb", subfiletype=1, metadata=None)
        tw.write(base[:50, :120], photometric="rgb", subfiletype=9, metadata=None)  # macro image
    reader = wsi_reader("tifffile")
    wsi = reader.read(str(path))
    g = slide_geometry(reader, wsi)
    assert g.sizes == [(768, 1024), (192, 256)]
    assert g.downsamples == [1.0, 4.0]
    assert g.mpp == pytest.approx(0.499) and g.power == pytest.approx(20.0)
    patch, _ = reader.get_data(wsi, location=(400, 512), size=(16, 16), level=1)
    np.testing.assert_array_equal(np.moveaxis(np.asarray(patch), 0, -1), base[::4, ::4][100:116, 128:144])
    wsi.close()


# ----------------------------------------------------------------------------------------------------------
# adapters and annotations
# ----------------------------------------------------------------------------------------------------------
def _touch_slide(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"placeholder")


def test_asap_xml_round_trip_and_exclusion_groups(tmp_path):
    square = np.array([[0, 0], [100, 0], [100, 100], [0, 100]], float)
    write_asap_xml([square], tmp_path / "a.xml")
    root = ET.parse(tmp_path / "a.xml").getroot()
    assert root.tag == "ASAP_Annotations" and root.find("Annotations/Annotation").get("Type") == "Polygon"
    anns = read_asap_xml(tmp_path / "a.xml")
    assert len(anns) == 1 and anns[0]["group"] == "_0"
    np.testing.assert_allclose(anns[0]["polygon"], square)
    hole = {"group": "_2", "polygon": np.array([[40, 40], [60, 40], [60, 60], [40, 60]], float)}
    inside = points_in_annotations(np.array([[10, 10], [50, 50], [150, 50]]), [*anns, hole])
    assert inside.tolist() == [True, False, False]
    (tmp_path / "bad.xml").write_text("<ASAP_Annotations><Annotations>")
    with pytest.raises(ValueError, match="bad.xml: not a readable ASAP"):
        read_asap_xml(tmp_path / "bad.xml")


def test_camelyon16_adapter_on_the_published_layout(tmp_path):
    root = tmp_path / "CAMELYON16"
    for i in range(1, 5):
        _touch_slide(root / "training" / "normal" / f"normal_{i:03d}.tif")
        _touch_slide(root / "training" / "tumor" / f"tumor_{i:03d}.tif")
    tri = np.array([[0, 0], [9, 0], [9, 9]], float)
    write_asap_xml([tri], root / "training" / "lesion_annotations" / "tumor_002.xml")
    for i in (1, 2, 3):
        _touch_slide(root / "testing" / "images" / f"test_{i:03d}.tif")
    write_asap_xml([tri], root / "testing" / "lesion_annotations" / "test_001.xml")
    # reference.csv as published: no header; tumour rows carry the metastasis type
    (root / "testing" / "reference.csv").write_text(
        "test_001,Tumor,Macro,Primary\ntest_002,Normal\ntest_003,Tumor,Micro,Primary\ntest_004,Normal\n")
    d = camelyon16_datalist(root, val_fraction=0.25, seed=0)
    assert d["labels"] == ["normal", "tumor"]
    assert len(d["training"]) + len(d["validation"]) == 8
    assert sorted(it["label"] for it in d["validation"]) == [0, 1]  # stratified
    train_val = {it["slide_id"]: it for it in d["training"] + d["validation"]}
    assert train_val["tumor_002"]["label"] == 1 and train_val["tumor_002"]["annotation"].endswith("tumor_002.xml")
    assert train_val["normal_003"]["label"] == 0 and "annotation" not in train_val["normal_003"]
    assert [(it["slide_id"], it["label"]) for it in d["testing"]] == [("test_001", 1), ("test_002", 0), ("test_003", 1)]
    assert d["testing"][0]["annotation"].endswith("test_001.xml")
    assert d["missing"] == [str(root / "testing" / "images" / "test_004.tif")]
    (root / "testing" / "reference.csv").write_text("test_001,Metastasis\n")
    with pytest.raises(ValueError, match=r"reference.csv, line 1: label 'Metastasis'"):
        camelyon16_datalist(root)
    with pytest.raises(FileNotFoundError, match="training/normal"):
        camelyon16_datalist(tmp_path / "elsewhere")


def test_panda_adapter_on_the_published_columns(tmp_path):
    root = tmp_path / "panda"
    rows = [("0005f7aaab2800f6170c399693a96917", "karolinska", 0, "0+0"),
            ("000920ad0b612851f8e01bcc880d9b3d", "karolinska", 0, "0+0"),
            ("0018ae58b01bdadc8e347995b69f99aa", "radboud", 4, "4+4"),
            ("001c62abd11fa4b57bf7a6c603a11bb9", "karolinska", 4, "4+4"),
            ("001d865e65ef5d2579c190a0e0350d8f", "karolinska", 0, "negative"),
            ("002a4db09dad406c85505a00fb6f6144", "karolinska", 0, "negative"),
            ("003046e27c8ead3e3db155780dc5498e", "karolinska", 1, "3+3"),
            ("0032bfa835ce0f43a92ae0bbab6871cb", "karolinska", 1, "3+3"),
            ("003a91841da04a5a31f808fb5c21538a", "karolinska", 1, "3+3"),
            ("003d4dd6bd61221ebc0bfb9350db333f", "karolinska", 1, "3+3")]
    root.mkdir()
    with open(root / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "data_provider", "isup_grade", "gleason_score"])
        w.writerows(rows)
    for r in rows[:-1]:
        _touch_slide(root / "train_images" / f"{r[0]}.tiff")
    _touch_slide(root / "train_label_masks" / f"{rows[2][0]}_mask.tiff")
    d = panda_datalist(root, val_fraction=0.2, test_fraction=0.2, seed=1)
    items = d["training"] + d["validation"] + d["testing"]
    assert len(items) == 9 and d["missing"] == [str(root / "train_images" / f"{rows[-1][0]}.tiff")]
    assert d["labels"] == [f"ISUP {g}" for g in range(6)]
    by_id = {it["slide_id"]: it for it in items}
    assert by_id[rows[2][0]]["label"] == 4 and by_id[rows[2][0]]["mask"].endswith("_mask.tiff")
    assert by_id[rows[2][0]]["data_provider"] == "radboud" and by_id[rows[4][0]]["gleason_score"] == "negative"
    assert len({it["slide_id"] for it in items}) == 9
    assert {it["label"] for it in d["testing"]} <= {0, 1, 4} and len(d["testing"]) >= 3
    with open(root / "train.csv", "a") as f:
        f.write("004391c8e5c4f2f0f5c0a0cb6ea9b7b9,radboud,7,5+5\n")
    with pytest.raises(ValueError, match=r"train.csv, line 12: isup_grade '7'"):
        panda_datalist(root)
    (root / "train.csv").write_text("image_id,data_provider,gleason_score\nabc,radboud,3+3\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['isup_grade'\]"):
        panda_datalist(root)


def test_tissue_params_from_a_config_mapping():
    assert TissueParams.of(None) == TissueParams()
    assert TissueParams.of({"method": "saturation"}).method == "saturation"
    with pytest.raises(ValueError, match="unknown tissue parameters"):
        TissueParams.of({"threshold": 0.1})
    with pytest.raises(ValueError, match="'otsu' or 'saturation'"):
        TissueParams(method="kmeans")
