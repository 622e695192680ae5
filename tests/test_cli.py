"""The ``medbundle`` command: list, report, froc (the demo runs the same configs as the bundle tests)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from medbundle.cli import main


def test_list_shows_every_bundle_with_task_io_and_version(capsys):
    assert main(["list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    cxr = rows["chest_xray_classification"]
    assert cxr["task_type"] == "classification"
    assert cxr["version"] == "0.2.0"
    assert "1ch 512x512" in cxr["input"] and "14 probabilities" in cxr["output"]
    assert main(["list"]) == 0
    assert "chest_xray_classification" in capsys.readouterr().out


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "medbundle.cli", "list"], capture_output=True, text=True, check=True)
    assert "classification" in out.stdout


def test_report_counts_prevalence_and_imbalance(tmp_path, capsys):
    dl = {
        "labels": ["A", "B", "C"],
        "training": [
            {"image": "1.png", "label": [1, 0, 0]},
            {"image": "2.png", "label": [1, 1, 0]},
            {"image": "3.png", "label": [1, 0, None]},
            {"image": "4.png", "label": [0, 0, 1]},
        ],
    }
    path = tmp_path / "dl.json"
    path.write_text(json.dumps(dl))
    assert main(["report", str(path), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    by = {c["name"]: c for c in rep["classes"]}
    assert by["A"]["count"] == 3 and by["B"]["count"] == 1 and by["C"]["count"] == 1
    assert by["A"]["prevalence"] == pytest.approx(0.75)
    assert by["C"]["prevalence"] == pytest.approx(1 / 3)  # the missing label is not counted
    assert by["C"]["missing"] == 1
    assert rep["imbalance_factor"] == pytest.approx(3.0)
    assert main(["report", str(path)]) == 0
    assert "A" in capsys.readouterr().out


def test_froc_command_through_main(tmp_path, capsys):
    (tmp_path / "ann.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\ns1,0,0,0,10\ns2,50,50,50,6\n")
    (tmp_path / "res.csv").write_text(
        "seriesuid,coordX,coordY,coordZ,probability\ns1,1,1,1,0.9\ns1,30,30,30,0.8\ns2,100,100,100,0.7\n"
    )
    (tmp_path / "uids.csv").write_text("s1\ns2\n")
    rc = main(["froc", "--annotations", str(tmp_path / "ann.csv"), "--results", str(tmp_path / "res.csv"),
               "--seriesuids", str(tmp_path / "uids.csv"), "--out", str(tmp_path / "out"), "--bootstrap", "0"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    # one of two nodules is found at the top score, before any false positive: sensitivity 0.5 everywhere
    assert res["cpm"] == pytest.approx(0.5)
    assert (tmp_path / "out" / "froc.png").is_file()


def test_demo_refuses_a_workdir_inside_the_source_tree(capsys):
    from medbundle.bundle import bundle_dir

    inside = bundle_dir("chest_xray_classification") / "work"
    assert main(["demo", "chest_xray_classification", "--workdir", str(inside)]) == 2
    assert "inside the bundle source" in capsys.readouterr().err


def test_demo_runs_the_readme_path_end_to_end(tmp_path, capsys):
    """`medbundle demo` as in the README, at smoke-test size: data, training, evaluation, inference."""
    work = tmp_path / "demo"
    rc = main(["demo", "chest_xray_classification", "--workdir", str(work),
               "--set", "num_epochs=1", "--set", "image_size=32", "--set", "save_gradcam=False"])
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    b = work / "chest_xray_classification"
    metrics = json.loads((b / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["mean_auroc"] <= 1.0 and len(metrics["per_class"]) == 14
    rows = (b / "predictions" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + metrics["n_images"]  # inference ran on the held-out split
    assert (b / "data" / "ChestXray14" / "Data_Entry_2017.csv").is_file()
    assert "mean AUROC (test)" in out and "chest_xray_classification" in out
    for step in ("training", "evaluating", "inference"):
        assert (b / "logs" / f"{step}.log").stat().st_size > 0


def test_demo_seed_draws_data_split_and_training_and_repeats_exactly(tmp_path, capsys):
    """One --seed drives the synthetic data, the split and the training; the same seed gives the same metrics."""
    from medbundle.xray.synthetic import generate_chestxray14

    work = tmp_path / "demo"
    args = ["demo", "chest_xray_classification", "--workdir", str(work), "--seed", "1",
            "--set", "num_epochs=2", "--set", "image_size=32", "--set", "save_gradcam=False"]
    b = work / "chest_xray_classification"
    runs = []
    for _ in range(2):
        assert main(args) == 0, capsys.readouterr().out[-3000:]
        metrics = json.loads((b / "eval" / "metrics.json").read_text())
        runs.append({k: v for k, v in metrics.items() if "time" not in k and "seconds" not in k})
    assert runs[0] == runs[1]
    assert (b / "data" / ".seed").read_text() == "1"
    log = (b / "logs" / "training.log").read_text()
    assert "> seed: 1" in log and "> split_seed: 1" in log
    seed0 = tmp_path / "seed0"
    generate_chestxray14(seed0, seed=0, min_pos_per_split=8)
    drawn = (b / "data" / "ChestXray14" / "Data_Entry_2017.csv").read_text()
    assert (seed0 / "Data_Entry_2017.csv").read_text() != drawn


def test_label_app_without_a_monai_label_environment_says_how_to_make_one(tmp_path, capsys):
    from medbundle.cli import main

    assert main(["label-app", "--workdir", str(tmp_path / "w"), "--label-env", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert "medbundle label-env" in err and str(tmp_path / "none") in err
    assert not (tmp_path / "w" / "work").exists()  # nothing was trained before the check


def test_label_env_requirement_names():
    from medbundle.monailabel.app import _requirement_name

    assert _requirement_name("monai[fire,itk]>=1.4.0") == "monai"
    assert _requirement_name('sam2>=0.4.1; python_version >= "3.10"') == "sam2"
    assert _requirement_name("dicomweb-client[gcp]>=0.59.1") == "dicomweb-client"
    assert _requirement_name("expiring_dict>=1.1.0") == "expiring-dict"
