"""One registry of recipes: demo, verify, label-app and the tests read it; a new bundle is its folder plus a recipe."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from medbundle import recipes
from medbundle.bundle import bundle_dir, list_bundles
from medbundle.zoo import verify_bundle

NEW = "chest_copy_classification"


@pytest.fixture
def fifth_bundle(tmp_path, monkeypatch):
    """A throw-away fifth bundle: a copy of the chest X-ray bundle's folder in its own bundles folder."""
    root = tmp_path / "bundles"
    shutil.copytree(bundle_dir("chest_xray_classification"), root / NEW,
                    ignore=shutil.ignore_patterns("models", "eval", "__pycache__"))
    meta_path = root / NEW / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["name"] = "Chest X-ray copy"
    meta_path.write_text(json.dumps(meta, indent=4))
    monkeypatch.setenv("MEDBUNDLE_BUNDLES", str(root))
    yield root / NEW
    recipes._RECIPES.pop(NEW, None)


def test_every_bundle_of_the_project_has_a_recipe():
    assert sorted(recipes.recipe_names()) == sorted(b.name for b in list_bundles())
    for name in recipes.recipe_names():
        r = recipes.get_recipe(name)
        assert r.headline[0] and 0 < r.target <= 1
        assert r.verify_profile().make_data is not None and r.label is not None


def test_unknown_bundle_names_the_known_ones():
    with pytest.raises(KeyError, match="bundles with a recipe: .*chest_xray_classification"):
        recipes.get_recipe("no_such_classification")


def test_a_fifth_bundle_is_its_folder_plus_one_recipe(fifth_bundle, tmp_path):
    # the folder alone: found as a bundle, but verify has no synthetic data for its workflow checks
    assert NEW in [b.name for b in list_bundles()]
    without = verify_bundle(fifth_bundle, workdir=tmp_path)
    assert [r.name for r in without][-1] == "properties" and not without[-1].ok
    assert "no synthetic-data profile" in without[-1].message

    # plus one recipe (here the chest bundle's, under the new name): every check runs and passes
    recipes.register(dataclasses.replace(recipes.get_recipe("chest_xray_classification"), name=NEW))
    assert NEW in recipes.recipe_names() and recipes.get_recipe(str(fifth_bundle)).name == NEW
    results = verify_bundle(fifth_bundle, workdir=tmp_path)
    assert [r.name for r in results] == ["required files", "version in changelog", "metadata schema",
                                         "verify_net_in_out", "TorchScript export", "properties (train)",
                                         "properties (infer)"]
    assert all(r.ok for r in results), [(r.name, r.message) for r in results if not r.ok]


def test_label_app_and_demo_read_the_same_recipe(fifth_bundle, tmp_path):
    from medbundle.monailabel.app import make_demo_data

    with pytest.raises(KeyError, match="no MONAI Label demo recipe"):
        make_demo_data(NEW, tmp_path)
    recipes.register(dataclasses.replace(recipes.get_recipe("chest_xray_classification"), name=NEW))
    data = make_demo_data(NEW, tmp_path / "data")
    assert (Path(data["dataset_dir"]) / "Data_Entry_2017.csv").is_file()
