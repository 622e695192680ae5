"""Attention MIL network, ordinal coding, entropy regulariser, bag transforms, chunked slide inference and
attention outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medbundle.networks import ResNetClassifier
from medbundle.pathology.losses import (
    AttentionEntropyRegularisedLoss,
    AttentionSupervisedLoss,
    OrdinalBCELoss,
    grade_from_class_probabilities,
    ordinal_class_probabilities,
    ordinal_decode,
    ordinal_encode,
)
from medbundle.pathology.networks import GatedAttentionPooling, MILClassifier, attention_entropy


def _tiny_mil(num_outputs=2, **kw):
    torch.manual_seed(0)
    bb = ResNetClassifier(depth=10, spatial_dims=2, in_channels=3, widen_factor=0.125, feed_forward=False)
    return MILClassifier(bb, num_outputs=num_outputs, projection_dim=16, attention_dim=8, dropout=0.0,
                         input_size=32, **kw)


def test_gated_attention_equals_hand_computation_and_sums_to_one():
    torch.manual_seed(1)
    pool = GatedAttentionPooling(6, attention_dim=4)
    h = torch.randn(2, 5, 6)
    z, a = pool(h)
    v, u, w = (m.weight.detach().numpy() for m in (pool.attention_v, pool.attention_u, pool.attention_w))
    bv, bu, bw = (m.bias.detach().numpy() for m in (pool.attention_v, pool.attention_u, pool.attention_w))
    hn = h.numpy()
    s = (np.tanh(hn @ v.T + bv) * (1 / (1 + np.exp(-(hn @ u.T + bu))))) @ w.T + bw
    e = np.exp(s[..., 0] - s[..., 0].max(1, keepdims=True))
    a_hand = e / e.sum(1, keepdims=True)
    np.testing.assert_allclose(a.detach().numpy(), a_hand, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.sum(1).detach().numpy(), 1.0, atol=1e-6)
    np.testing.assert_allclose(z.detach().numpy(), (a_hand[..., None] * hn).sum(1), rtol=1e-5, atol=1e-6)
    # masked instances get zero weight and the rest still sums to one
    mask = torch.tensor([[True, True, False, True, False], [True] * 5])
    z_m, a_m = pool(h, mask)
    assert float(a_m[0, 2]) == 0.0 and float(a_m[0, 4]) == 0.0
    np.testing.assert_allclose(a_m.sum(1).detach().numpy(), 1.0, atol=1e-6)
    z_sub, _ = pool(h[:1, [0, 1, 3]])
    torch.testing.assert_close(z_m[0], z_sub[0])
    # the ungated form is tanh attention only
    plain = GatedAttentionPooling(6, attention_dim=4, gated=False)
    s_plain = np.tanh(hn @ plain.attention_v.weight.detach().numpy().T + plain.attention_v.bias.detach().numpy())
    s_plain = s_plain @ plain.attention_w.weight.detach().numpy().T + plain.attention_w.bias.detach().numpy()
    e = np.exp(s_plain[..., 0] - s_plain[..., 0].max(1, keepdims=True))
    np.testing.assert_allclose(plain(h)[1].detach().numpy(), e / e.sum(1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_mil_classifier_is_permutation_invariant_and_uniform_on_identical_patches():
    net = _tiny_mil().eval()
    x = torch.rand(2, 7, 3, 32, 32)
    with torch.no_grad():
        logits, att = net.forward_with_attention(x)
        perm = torch.randperm(7)
        logits_p, att_p = net.forward_with_attention(x[:, perm])
        torch.testing.assert_close(logits, logits_p, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(att[:, perm], att_p, atol=1e-6, rtol=1e-5)
        same = x[:, :1].expand(2, 6, 3, 32, 32)
        _, att_same = net.forward_with_attention(same)
        torch.testing.assert_close(att_same, torch.full((2, 6), 1 / 6), atol=1e-6, rtol=0)
        # one bag as (N, 3, P, P), features as (B, N, D), and embed + pool all agree with the 5-D forward
        torch.testing.assert_close(net(x[0]), logits[:1], atol=1e-5, rtol=1e-5)
        feats = net.embed(x.reshape(14, 3, 32, 32)).reshape(2, 7, -1)
        torch.testing.assert_close(net(feats), logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(net.pool(feats)[1], att, atol=1e-6, rtol=1e-5)
    assert net.last_attention.shape == (2, 7)


def test_torchscript_export_matches_eager():
    net = _tiny_mil().eval()
    scripted = torch.jit.script(net)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), atol=1e-5, rtol=1e-5)
        la, aa = scripted.forward_with_attention(x.unsqueeze(0))
        lb, ab = net.forward_with_attention(x.unsqueeze(0))
        torch.testing.assert_close(aa, ab, atol=1e-6, rtol=1e-5)


def test_torchvision_backbone_loses_its_fc_and_frozen_backbone_gets_no_gradient(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    bb = torchvision.models.resnet18(weights=None)
    torch.save(bb.state_dict(), tmp_path / "bb.pt")
    ref = {k: v.clone() for k, v in bb.state_dict().items()}
    net = MILClassifier(torchvision.models.resnet18(weights=None), num_outputs=5,
                        backbone_weights=str(tmp_path / "bb.pt"), freeze_backbone=True, projection_dim=32,
                        attention_dim=8)
    assert net.feature_dim == 512 and isinstance(net.backbone.fc, torch.nn.Identity)
    torch.testing.assert_close(net.backbone.conv1.weight, ref["conv1.weight"])  # local weights were loaded
    net.train()
    assert not net.backbone.training and net.classifier.training  # frozen BatchNorm statistics
    out = net(torch.rand(1, 4, 3, 64, 64))
    assert out.shape == (1, 5)
    out.sum().backward()
    assert all(p.grad is None for p in net.backbone.parameters())
    assert net.classifier.weight.grad is not None and net.attention.attention_w.weight.grad is not None


def test_attention_entropy_and_regulariser():
    uniform = torch.full((1, 8), 1 / 8)
    onehot = torch.tensor([[1.0] + [0.0] * 7])
    assert float(attention_entropy(uniform)) == pytest.approx(1.0)
    assert float(attention_entropy(onehot)) == pytest.approx(0.0, abs=1e-6)
    a = torch.tensor([[0.5, 0.25, 0.25]])
    assert float(attention_entropy(a, normalise=False)) == pytest.approx(-(0.5 * np.log(0.5) + 0.5 * np.log(0.25)))
    net = _tiny_mil().train()
    base = torch.nn.CrossEntropyLoss()
    reg = AttentionEntropyRegularisedLoss(base, net, weight=0.3)
    x, y = torch.rand(2, 5, 3, 32, 32), torch.tensor([0, 1])
    pred = net(x)
    expected = base(pred, y) + 0.3 * attention_entropy(net.last_attention).mean()
    torch.testing.assert_close(reg(pred, y), expected)
    assert reg.last_entropy == pytest.approx(float(attention_entropy(net.last_attention).mean()))
    assert AttentionEntropyRegularisedLoss(base, net, 0.0)(pred, y).item() == pytest.approx(base(pred, y).item())
    assert "_network" not in dict(reg.named_modules())  # the network is not a submodule of the loss


def test_attention_supervised_loss_is_the_cross_entropy_to_uniform_over_tumour_patches():
    net = _tiny_mil().train()
    base = torch.nn.CrossEntropyLoss()
    sup = AttentionSupervisedLoss(base, net, weight=0.5)
    x = torch.rand(2, 4, 3, 32, 32)
    pred = net(x)
    a = net.last_attention
    # bag 0 (tumour): patches 1 and 2 tumour, patch 3 unknown; bag 1 (normal): no tumour patch
    target = torch.tensor([[1.0, 0.0, 1.0, 1.0, -1.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    known = a[0, :3].sum()
    term = -(torch.log(a[0, 1] / known) + torch.log(a[0, 2] / known)) / 2
    y = torch.tensor([1, 0])
    torch.testing.assert_close(sup(pred, target), base(pred, y) + 0.5 * term)
    assert sup.last_attention_loss == pytest.approx(float(term.detach()))
    # slide labels only, or weight 0: the slide loss alone
    torch.testing.assert_close(sup(pred, y), base(pred, y))
    torch.testing.assert_close(AttentionSupervisedLoss(base, net, 0.0)(pred, target), base(pred, y))
    # the term falls when attention moves onto the tumour patches
    g = torch.autograd.grad(sup(pred, target), net.attention.attention_w.bias, allow_unused=True)[0]
    assert g is None or torch.isfinite(g).all()
    assert "_network" not in dict(sup.named_modules())


def test_ordinal_coding_round_trip_and_class_probabilities():
    g = torch.tensor([0, 2, 5, 3])
    enc = ordinal_encode(g, 6)
    assert enc.tolist() == [[0, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    logits = (enc * 2 - 1) * 6.0
    assert ordinal_decode(logits).tolist() == g.tolist()
    probs = ordinal_class_probabilities(logits)
    assert probs.argmax(1).tolist() == g.tolist()
    torch.testing.assert_close(probs.sum(1), torch.ones(4))
    torch.manual_seed(0)
    rnd = torch.randn(200, 5) * 3
    p = ordinal_class_probabilities(rnd)
    assert torch.all(p >= 0)
    torch.testing.assert_close(p.sum(1), torch.ones(200))
    assert torch.equal(grade_from_class_probabilities(p), ordinal_decode(rnd))  # same decision both ways
    loss = OrdinalBCELoss(6)(rnd[:4], g)
    hand = torch.nn.functional.binary_cross_entropy_with_logits(rnd[:4], ordinal_encode(g, 6))
    torch.testing.assert_close(loss, hand)
    with pytest.raises(ValueError, match="grade out of range"):
        ordinal_encode(torch.tensor([6]), 6)


def test_rand_dihedral_bag_transforms_each_patch_by_a_symmetry():
    from medbundle.pathology.transforms import RandDihedralBagd

    x = torch.rand(40, 3, 8, 8)
    t = RandDihedralBagd(keys="image", prob=1.0)
    t.set_random_state(0)
    y = t({"image": x})["image"]
    used = set()
    for i in range(40):
        cands = [torch.rot90(torch.flip(x[i], (-1,)) if f else x[i], k, (-2, -1)) for f in (0, 1) for k in range(4)]
        match = [j for j, c in enumerate(cands) if torch.equal(c, y[i])]
        assert match and match[0] != 0
        used.add(match[0])
    assert len(used) >= 5
    assert torch.equal(RandDihedralBagd(keys="image", prob=0.0)({"image": x})["image"], x)


def test_quadratic_kappa_metric_uses_the_ordinal_decision():
    from medbundle.metrics import cohen_kappa_quadratic
    from medbundle.pathology.decisions import QuadraticKappaMetric

    torch.manual_seed(2)
    logits = torch.randn(30, 5) * 2
    probs = ordinal_class_probabilities(logits)
    y = torch.randint(0, 6, (30,))
    m = QuadraticKappaMetric()
    m(probs[:12], y[:12])
    m(probs[12:], y[12:])
    assert m.aggregate() == pytest.approx(cohen_kappa_quadratic(y.numpy(), ordinal_decode(logits).numpy(), 6))


# ----------------------------------------------------------------------------------------------------------
# with real (synthetic) slides
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    pytest.importorskip("tifffile")
    pytest.importorskip("openslide")
    from medbundle.pathology.reader import build_slide_grid
    from medbundle.pathology.synthetic import make_slide, write_synthetic_slide

    root = tmp_path_factory.mktemp("mil")
    s = make_slide(1024, 1024, mpp=1.0, seed=21, tumour=True, n_tumours=1, tumour_radius_um=(150.0, 200.0))
    path = write_synthetic_slide(s, root / "slide.tif")
    grid = build_slide_grid(path, patch_size=32, mpp=2.0, mask_mpp=8.0)
    return path, grid, s


def test_chunked_slide_inference_equals_one_pass_over_all_patches(slide):
    from medbundle.pathology.inference import PrepareSlideBatch, SlideMILInferer, slide_collate
    from medbundle.pathology.reader import open_slide, read_patches

    path, grid, _ = slide
    net = _tiny_mil().eval()
    with open_slide(path) as (reader, wsi):
        allp = torch.from_numpy(read_patches(reader, wsi, grid)).float() / 255.0
    with torch.no_grad():
        ref_logits, ref_att = net.forward_with_attention(allp.unsqueeze(0))
    batch = slide_collate([{"image": str(path), "grid": grid, "label": 1}])
    counts, label, args, kwargs = PrepareSlideBatch()(batch, "cpu")
    assert counts.tolist() == [len(grid)] and label.tolist() == [1]
    for chunk in (7, 10_000):
        inf = SlideMILInferer(chunk_size=chunk)
        logits = inf(counts, net, **kwargs)
        torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
        res = inf.last_results[0]
        np.testing.assert_allclose(res.attention, ref_att[0].numpy(), rtol=1e-4, atol=1e-7)
        assert res.attention.sum() == pytest.approx(1.0, abs=1e-5)
        top = res.top_k(5)
        assert np.all(np.diff(res.attention[top]) <= 0) and res.attention[top[0]] == res.attention.max()
    # the same with features cached on the grid (feature mode): the backbone is skipped
    with torch.no_grad():
        grid.features = net.embed(allp)
    try:
        inf = SlideMILInferer(chunk_size=3)
        torch.testing.assert_close(inf(counts, net, **kwargs), ref_logits, atol=1e-5, rtol=1e-5)
        assert inf.last_results[0].used_cached_features
    finally:
        grid.features = None


def test_slide_grid_as_image_tensor_gives_the_same_logits_as_the_evaluator_path(slide):
    """MONAI Label's call: inferer(torch.as_tensor(data["image"])[None], network), no grids argument."""
    from monai.data import MetaTensor

    from medbundle.pathology.inference import SlideMILInferer
    from medbundle.pathology.transforms import SlideGridImaged, TissueGridd

    path, _, _ = slide
    d = TissueGridd("image", patch_size=32, mpp=2.0, mask_mpp=8.0)({"image": str(path)})
    d = SlideGridImaged("image")(d)
    image, grid = d["image"], d["grid"]
    assert isinstance(image, MetaTensor) and image.shape == (len(grid), 2) and image.dtype == torch.int64
    np.testing.assert_array_equal(image.numpy(), grid.coords)
    assert image.meta["filename_or_obj"] == str(path)
    net = _tiny_mil().eval()
    ref = SlideMILInferer(chunk_size=16)(torch.tensor([len(grid)]), net, grids=[grid])
    inf = SlideMILInferer(chunk_size=16)
    logits = inf(image[None].to("cpu"), net)
    torch.testing.assert_close(logits, ref)
    assert inf.last_results[0].path == str(path)
    with pytest.raises(ValueError, match="SlideGridImaged"):
        SlideMILInferer()(torch.zeros(1, 5, 2), net)


def test_bag_features_are_cached_per_backbone(slide, tmp_path):
    from medbundle.pathology.transforms import BagFeaturesd, RandFeatureBagd

    path, grid, _ = slide
    net = _tiny_mil(freeze_backbone=True)
    with pytest.raises(ValueError, match="frozen backbone"):
        BagFeaturesd(network=_tiny_mil())
    t = BagFeaturesd(network=net, cache_dir=tmp_path, chunk_size=9)
    from copy import deepcopy

    g = deepcopy(grid)
    t({"grid": g})
    assert g.features.shape == (len(grid), net.feature_dim)
    files = list(tmp_path.glob("*.pt"))
    assert len(files) == 1
    g2 = deepcopy(grid)
    t2 = BagFeaturesd(network=net, cache_dir=tmp_path)
    t2({"grid": g2})
    torch.testing.assert_close(g2.features, g.features)
    with torch.no_grad():
        net.backbone.conv1.weight.add_(0.1)  # another backbone: another cache entry
    BagFeaturesd(network=net, cache_dir=tmp_path)({"grid": deepcopy(grid)})
    assert len(list(tmp_path.glob("*.pt"))) == 2
    bag = RandFeatureBagd(bag_size=5)
    bag.set_random_state(0)
    out = bag({"grid": g, "label": 1})
    assert out["image"].shape == (5, net.feature_dim) and "grid" not in out
    torch.testing.assert_close(out["image"], g.features[torch.as_tensor(out["patch_indices"])])


def test_rand_bag_reads_distinct_tissue_patches(slide):
    from medbundle.pathology.reader import open_slide, read_patches
    from medbundle.pathology.transforms import RandBagd

    path, grid, _ = slide
    t = RandBagd(bag_size=12)
    t.set_random_state(3)
    out = t({"grid": grid, "label": 0, "image": str(path)})
    idx = out["patch_indices"]
    assert out["image"].shape == (12, 3, 32, 32) and len(set(idx.tolist())) == 12 and "grid" not in out
    with open_slide(path) as (reader, wsi):
        np.testing.assert_array_equal(out["image"], read_patches(reader, wsi, grid, idx))
    big = RandBagd(bag_size=len(grid) + 5)({"grid": grid})
    assert set(big["patch_indices"].tolist()) == set(range(len(grid)))  # every patch, then repeats


def test_patch_tumour_labels_bags_with_positives_and_bag_targets(slide, tmp_path):
    from medbundle.pathology.adapters import points_in_annotations, read_asap_xml
    from medbundle.pathology.synthetic import write_asap_xml
    from medbundle.pathology.transforms import BagTargetd, PatchTumourLabelsd, RandBagd

    path, grid, s = slide
    ann = write_asap_xml(s.tumour_polygons, tmp_path / "slide.xml")
    out = PatchTumourLabelsd()({"grid": grid, "label": 1, "annotation": str(ann)})
    labels = out["patch_labels"]
    inside = points_in_annotations(grid.centres_xy(), read_asap_xml(ann))
    assert labels.shape == (len(grid),) and labels.dtype == np.int8
    np.testing.assert_array_equal(labels == 1, inside)  # the evaluation's rule: centre inside
    assert inside.sum() >= 2 and (labels == -1).sum() >= 1 and (labels == 0).sum() >= 1
    assert (PatchTumourLabelsd()({"grid": grid, "label": 0})["patch_labels"] == 0).all()
    assert (PatchTumourLabelsd()({"grid": grid, "label": 1})["patch_labels"] == -1).all()  # no outline: unknown

    t = RandBagd(bag_size=8, positive_fraction=0.25)
    t.set_random_state(0)
    for _ in range(5):
        bag = t({"grid": grid, "label": 1, "patch_labels": labels})
        np.testing.assert_array_equal(bag["patch_labels"], labels[bag["patch_indices"]])
        assert (bag["patch_labels"] == 1).sum() >= 2 and len(set(bag["patch_indices"].tolist())) == 8
    target = BagTargetd()(bag)
    assert "patch_labels" not in target and target["label"].shape == (9,)
    assert target["label"][0] == 1 and torch.equal(target["label"][1:], torch.as_tensor(bag["patch_labels"]).float())


def test_heatmap_geojson_and_mosaic(slide, tmp_path):
    from medbundle.pathology.viz import attention_geojson, save_attention_heatmap, top_patch_mosaic, write_geojson

    path, grid, s = slide
    n = len(grid)
    att = np.random.default_rng(0).random(n)
    att /= att.sum()
    geo = attention_geojson(grid, att, top_k=3)
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) == n
    best = int(np.argmax(att))
    f = geo["features"][best]
    assert f["properties"]["measurements"]["attention_rank"] == 1
    assert f["properties"]["classification"]["name"] == "Top attention"
    ring = np.array(f["geometry"]["coordinates"][0])
    y, x = grid.coords[best]
    side = grid.footprint
    np.testing.assert_allclose(ring, [[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]])
    assert sum("classification" in g["properties"] for g in geo["features"]) == 3
    out = write_geojson(geo, tmp_path / "a.geojson")
    assert json.loads(out.read_text())["features"][0]["properties"]["objectType"] == "detection"
    png = save_attention_heatmap(grid, att, tmp_path / "h.png")
    from PIL import Image

    img = np.asarray(Image.open(png))
    assert img.shape == grid.thumbnail.shape
    assert not np.array_equal(img, grid.thumbnail)  # coloured where there are patches
    ds = grid.thumbnail_downsample
    far = np.ones(grid.thumbnail.shape[:2], bool)
    for yy, xx in grid.coords:
        far[int(yy // ds): int(np.ceil((yy + side) / ds)), int(xx // ds): int(np.ceil((xx + side) / ds))] = False
    np.testing.assert_array_equal(img[far], grid.thumbnail[far])  # untouched away from the patches
    mosaic = top_patch_mosaic(np.zeros((5, 3, 32, 32), np.uint8), att[:5], n, cols=3)
    assert mosaic.ndim == 3 and mosaic.shape[1] == 3 * 32 + 4 * 4
