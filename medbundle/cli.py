"""The ``medbundle`` command: list, demo, prepare, report, froc, verify, package, label-env, label-app, pacs-infer."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["main"]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "-" if v is None else str(v)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *[line(r) for r in rows]])


def _cmd_list(args: argparse.Namespace) -> int:
    from medbundle.bundle import list_bundles

    infos = list_bundles()
    if args.json:
        print(json.dumps([{**i.__dict__, "path": str(i.path)} for i in infos], indent=2))
        return 0
    rows = [[i.name, i.task_type, i.input, i.output, i.version] for i in infos]
    print(_table(rows, ["bundle", "task", "input", "output", "version"]))
    return 0


def _overrides(items: list[str] | None) -> dict[str, str]:
    """``--set KEY=VALUE`` arguments as ``{KEY: VALUE}`` (values as typed: Python literals or text)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE (a config id and a Python literal), got {item!r}")
        out[key] = value
    return out


def _literal(value: str):
    """A command-line value as MONAI's bundle runner reads it: a Python literal when it parses, else text."""
    import ast

    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def _size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(nbytes) < 1024 or unit == "TB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    return f"{nbytes:.1f} TB"


def _cmd_prepare(args: argparse.Namespace) -> int:
    import logging

    from medbundle.prepare import prepare_bundle

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        overrides = {k: _literal(v) for k, v in _overrides(args.set).items()}
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for key in ("dataset_dir", "datalist_file", "bundle_root"):
        if getattr(args, key, None):
            overrides[key] = str(Path(getattr(args, key)).resolve())
    try:
        reports = prepare_bundle(args.bundle, overrides, config_files=args.config or (),
                                 splits=args.splits.split(","), num_workers=args.workers)
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not reports:
        print("nothing to prepare")
        return 0
    rows = [[r["split"], r["items"], r["prepared"], r["already_cached"], r["failed"], _size(r["bytes_written"]),
             _size(r["cache_bytes"]), f"{r['seconds']:.0f}"] for r in reports]
    print()
    print(_table(rows, ["split", "items", "prepared", "cached before", "failed", "written", "cache size", "seconds"]))
    folders = sorted({r["cache_dir"] for r in reports if r["cache_dir"]})
    total = sum({r["cache_dir"]: r["cache_bytes"] for r in reports}.values())
    if folders:
        print(f"disk used by the cache: {_size(total)} in {', '.join(folders)}")
    else:
        print("these datasets keep no entries of their own (no cache_dir); their transforms' own caches are filled")
    if any(r["failed"] for r in reports):
        print("unreadable items were reported above and recorded in failed.jsonl; training skips them")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from medbundle.bundle import bundle_dir
    from medbundle.demo import run_demo
    from medbundle.recipes import recipe_names

    names = args.bundles or recipe_names()
    workdir = Path(args.workdir).resolve()
    for n in names:
        src = bundle_dir(n) if n in recipe_names() else None
        if src is not None and (workdir == src or src in workdir.parents):
            print(f"error: --workdir {workdir} is inside the bundle source {src}; choose another folder",
                  file=sys.stderr)
            return 2
    try:
        overrides = _overrides(args.set)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        rows = run_demo(names, workdir, verbose=args.verbose, overrides=overrides, seed=args.seed)
    except (RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print()
    fixed = ("bundle", "seed", "metric", "value", "target", "minutes", "times_s", "workdir")
    extra = list(dict.fromkeys(k for r in rows for k in r if k not in fixed))  # bundles report different extras
    table = [[r["bundle"], r["metric"], _fmt(r["value"]), f">= {r['target']}", *[_fmt(r.get(k)) for k in extra],
              f"{r['minutes']:.1f}"] for r in rows]
    print(_table(table, ["bundle", "metric", "value", "target", *extra, "minutes"]))
    for r in rows:
        print(f"{r['bundle']}: metrics {r['workdir']}/eval/metrics.json, outputs {r['workdir']}/predictions")
    ok = all(r["value"] is not None and r["value"] >= r["target"] for r in rows)
    return 0 if ok or not args.strict else 3


def _cmd_report(args: argparse.Namespace) -> int:
    from medbundle.sampling import format_imbalance_report, imbalance_report

    names = args.class_names.split(",") if args.class_names else None
    with open(args.datalist) as f:
        content = json.load(f)
    if names is None and isinstance(content, dict) and isinstance(content.get("labels"), list):
        names = [str(n) for n in content["labels"]]  # adapters record the class names in the datalist
    rep = imbalance_report(content, split=args.split, label_key=args.label_key, class_names=names)
    print(json.dumps(rep, indent=2) if args.json else format_imbalance_report(rep))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    import tempfile

    from medbundle.bundle import bundle_dir
    from medbundle.zoo import ChecksumError, UnsafeArchiveError, check_package, safe_extract, verify_bundle

    def show(r) -> None:
        print(f"{'PASS' if r.ok else 'FAIL'}  {r.name:<22} {r.seconds:5.1f}s  {r.message}", flush=True)

    failed = 0
    for name in args.bundles:
        with tempfile.TemporaryDirectory(prefix="medbundle_pkg_") as tmp:
            try:
                if name.endswith(".zip"):
                    if args.model_info:
                        print(f"{name}: SHA-256 matches model_info.json entry {check_package(name, args.model_info)}")
                    safe_extract(name, tmp)
                    tops = [p for p in Path(tmp).iterdir() if (p / "configs" / "metadata.json").is_file()]
                    if len(tops) != 1:
                        raise ValueError(f"{name} does not hold one <name>/configs/metadata.json bundle folder")
                    path = tops[0]
                else:
                    path = bundle_dir(name)
            except (ValueError, KeyError, OSError, ChecksumError, UnsafeArchiveError) as e:
                print(f"error: {name}: {e}", file=sys.stderr)
                failed += 1
                continue
            print(f"== {path.name} ({path})")
            results = verify_bundle(path, report=show)
        bad = [r.name for r in results if not r.ok]
        print(f"{path.name}: {'FAILED: ' + ', '.join(bad) if bad else 'all model-zoo checks passed'}")
        failed += bool(bad)
    return 1 if failed else 0


def _cmd_package(args: argparse.Namespace) -> int:
    from medbundle.bundle import bundle_dir
    from medbundle.zoo import package_bundles

    try:
        paths = [bundle_dir(n) for n in args.bundles]
        entries = package_bundles(paths, args.out, base_url=args.base_url, with_weights=args.with_weights)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = Path(args.out).resolve()
    for key, e in entries.items():
        print(f"{out / (key + '.zip')}  sha256 {e['checksum']}")
    print(f"index: {out / 'model_info.json'}")
    return 0


def _cmd_label_env(args: argparse.Namespace) -> int:
    from medbundle.monailabel.app import create_label_env

    try:
        venv = create_label_env(args.venv)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"MONAI Label environment ready: {venv} (layered on {sys.prefix})")
    return 0


def _cmd_label_app(args: argparse.Namespace) -> int:
    import shlex

    from medbundle.monailabel.app import demo_app, server_command

    try:
        res = demo_app(args.workdir, args.label_env, args.bundles or None, retrain=args.retrain,
                       n_labelled=args.labelled)
    except (KeyError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    cmd = server_command(args.label_env, res["app"], res["studies"], res["models"], port=args.port)
    print(f"app: {res['app']} (bundles in {res['app'] / 'model'})\nstudies: {res['studies']}")
    print("start the server with:\n  " + shlex.join(cmd))
    for name in res["models"]:
        print(f"  curl -X POST 'http://127.0.0.1:{args.port}/infer/{name}?image={res['ids'][name]}&output=json'")
    for key, studies in res["ids"].items():
        if key.endswith(":labelled") and studies:
            print(f"class labels for /train: {res['labels']}/*.json ({len(studies)} images of {key.split(':')[0]})")
    return 0


def _cmd_pacs_infer(args: argparse.Namespace) -> int:
    from medbundle.pacs import pacs_infer

    try:
        overrides = _overrides(args.set)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    modalities = args.modality.split(",") if args.modality else None
    try:
        res = pacs_infer(args.bundle, args.dicomweb, args.study, workdir=args.workdir, bundle_root=args.bundle_root,
                         configs=args.config or (), overrides=overrides, modalities=modalities,
                         store=not args.no_store)
    except (ValueError, LookupError, RuntimeError, ImportError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    where = f"outputs in {res['output_dir']}" if args.workdir else "outputs removed (pass --workdir to keep them)"
    if args.no_store:
        print(f"{len(res['sr_files'])} SR(s) written, not stored; {where}")
    else:
        print(f"stored {len(res['stored'])} SR(s) in the study: {', '.join(res['stored'])}; {where}")
    return 0


def _cmd_froc(args: argparse.Namespace) -> int:
    """LUNA16 FROC/CPM from CSV files; prints the summary JSON. Exit 1 when an input file cannot be read or is
    malformed (the message, naming the file, goes to stderr); bad arguments exit 2."""
    from medbundle.metrics.froc import evaluate_luna16_files, summary
    from medbundle.utils import to_jsonable

    if args.bootstrap < 0 or args.max_marks < 1:
        print("medbundle froc: error: --bootstrap must be >= 0 and --max-marks >= 1", file=sys.stderr)
        return 2
    try:
        result = evaluate_luna16_files(
            args.annotations, args.results, seriesuids_csv=args.seriesuids, excluded_csv=args.excluded,
            out_dir=args.out, n_bootstraps=args.bootstrap, seed=args.seed, max_marks_per_scan=args.max_marks,
        )
    except (OSError, ValueError) as err:
        print(f"medbundle froc: error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(to_jsonable(summary(result)), indent=2))
    return 0


def _cmd_anchors(args: argparse.Namespace) -> int:
    from medbundle.detection.anchors import propose_anchors

    with open(args.datalist) as f:
        content = json.load(f)
    items = content.get(args.split, []) if isinstance(content, dict) else content
    boxes = [b for it in items for b in (it.get(args.box_key) or [])]
    if not boxes:
        print(f"error: {args.datalist}: no '{args.box_key}' boxes in split '{args.split}'", file=sys.stderr)
        return 2
    try:
        prop = propose_anchors(boxes, n_levels=args.n_levels, n_sizes_per_level=args.sizes_per_level,
                               n_ratios=args.n_ratios, scale=args.scale)
    except ValueError as e:
        print(f"error: {args.datalist}: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(prop, indent=2))
        return 0
    print(f"{prop['n_boxes']} boxes; anchor recall at IoU {prop['iou_threshold']}: proposed "
          f"{prop['anchor_recall']:.3f}, default {prop['default_anchor_recall']:.3f}")
    print(f"--anchor_sizes \"{prop['anchor_sizes']}\" --aspect_ratios \"{prop['aspect_ratios']}\"")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medbundle", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("list", help="list the bundles with task, input, output and version")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_list)

    s = sub.add_parser("demo", help="synthetic data -> train -> evaluate -> infer, through monai.bundle")
    s.add_argument("bundles", nargs="*", help="bundle names (default: every bundle with a demo)")
    s.add_argument("--workdir", default="demo_work", help="where data, models and outputs go (default ./demo_work)")
    s.add_argument("--verbose", action="store_true", help="print every log line")
    s.add_argument("--strict", action="store_true", help="exit 3 if a bundle misses its demo target")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value in every step, e.g. --set num_epochs=1 (repeatable)")
    s.add_argument("--seed", type=int, default=0,
                   help="draws the synthetic data and the split and seeds the training (default 0)")
    s.set_defaults(func=_cmd_demo)

    s = sub.add_parser("prepare", help="fill a bundle's disk cache of preprocessed items before training")
    s.add_argument("bundle", help="bundle name or folder")
    s.add_argument("--dataset_dir", default=None, help="the dataset root, as given to training")
    s.add_argument("--datalist_file", default=None, help="a datalist JSON, as given to training")
    s.add_argument("--bundle_root", default=None,
                   help="the training's bundle_root (the cache goes to <bundle_root>/cache unless --set cache_dir=...)")
    s.add_argument("--config", action="append", metavar="JSON",
                   help="config layered after train.json, as in the training command (repeatable)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any other config value the training command sets, e.g. --set image_size=512 (repeatable)")
    s.add_argument("--splits", default="training,validation,testing", help="comma-separated splits to prepare")
    s.add_argument("--workers", type=int, default=None, help="threads (default: the config's num_workers)")
    s.set_defaults(func=_cmd_prepare)

    s = sub.add_parser("report", help="class counts, prevalence and imbalance of a datalist")
    s.add_argument("datalist", help="MONAI datalist JSON")
    s.add_argument("--split", default="training")
    s.add_argument("--label-key", default="label")
    s.add_argument("--class-names", default=None, help="comma-separated names, one per label column")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_report)

    s = sub.add_parser("verify", help="model-zoo checks: files, changelog, metadata schema, net in/out, "
                                      "TorchScript export, config properties")
    s.add_argument("bundles", nargs="+", help="bundle names, bundle folders, or packaged <name>_v<version>.zip files")
    s.add_argument("--model-info", default=None, help="model_info.json: check a zip's SHA-256 before extracting it")
    s.set_defaults(func=_cmd_verify)

    s = sub.add_parser("package", help="write <name>_v<version>.zip per bundle and a model_info.json index")
    s.add_argument("bundles", nargs="+", help="bundle names or folders")
    s.add_argument("--out", required=True, help="folder for the zips and model_info.json")
    s.add_argument("--base-url", default=None, help="URL prefix for the 'source' entries (default: the file name)")
    s.add_argument("--with-weights", default=None, metavar="DIR",
                   help="folder with <name>/model.pt (or <name>/models/model.pt) to package as models/model.pt")
    s.set_defaults(func=_cmd_package)

    s = sub.add_parser("label-env", help="create a MONAI Label environment layered on this one")
    s.add_argument("venv", help="folder for the new virtual environment (e.g. .venv-label)")
    s.set_defaults(func=_cmd_label_env)

    s = sub.add_parser("label-app", help="train the demo bundles and lay out a MONAI Label app and studies folder")
    s.add_argument("bundles", nargs="*", help="bundle names (default: all four)")
    s.add_argument("--workdir", default="demo_work/label", help="data, trained bundles, app/ and studies/ go here")
    s.add_argument("--label-env", default=".venv-label", help="the MONAI Label environment (medbundle label-env)")
    s.add_argument("--port", type=int, default=8000, help="port in the printed server command")
    s.add_argument("--retrain", action="store_true", help="train again even where a checkpoint exists")
    s.add_argument("--labelled", type=int, default=12,
                   help="chest X-rays added to the studies with class-label files in <workdir>/labels (for /train)")
    s.set_defaults(func=_cmd_label_app)

    s = sub.add_parser("pacs-infer", help="infer a study held in a DICOMweb archive (QIDO/WADO) with a bundle and "
                                          "store its DICOM SRs back into the study (STOW)")
    s.add_argument("bundle", help="bundle name or folder")
    s.add_argument("--dicomweb", required=True, help="the archive's DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web")
    s.add_argument("--study", required=True, help="Study Instance UID")
    s.add_argument("--bundle-root", default=None, help="the trained bundle (models/model.pt under it; default: bundle)")
    s.add_argument("--config", action="append", metavar="JSON",
                   help="config layered after inference.json, e.g. the bundle's configs/demo.json (repeatable)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    s.add_argument("--modality", default=None,
                   help="comma-separated series modalities to infer (default: the bundle's input modality)")
    s.add_argument("--workdir", default=None,
                   help="keep the retrieved study and the outputs here (default: a temporary folder, removed)")
    s.add_argument("--no-store", action="store_true", help="write the SRs but do not send them to the archive")
    s.set_defaults(func=_cmd_pacs_infer)

    s = sub.add_parser("froc", help="LUNA16 FROC/CPM of a results CSV",
                       description="LUNA16 FROC: sensitivity at 1/8..8 FPs per scan and CPM (linear interpolation).")
    add = s.add_argument
    add("--annotations", required=True, help="annotations.csv (seriesuid,coordX,coordY,coordZ,diameter_mm)")
    add("--results", required=True, help="CAD marks CSV (seriesuid,coordX,coordY,coordZ,probability)")
    add("--excluded", default=None, help="annotations_excluded.csv (marks on these are ignored)")
    add("--seriesuids", default=None, help="seriesuids.csv: the evaluated scans, one UID per line")
    add("--out", default=None, help="folder for froc.json and froc.png")
    add("--bootstrap", type=int, default=1000, help="scan bootstrap resamples for CIs (0: none)")
    add("--seed", type=int, default=0, help="bootstrap seed")
    add("--max-marks", type=int, default=100, help="marks kept per scan (highest probability)")
    s.set_defaults(func=_cmd_froc)

    s = sub.add_parser("anchors", help="anchor sizes and aspect ratios for the 2D detector, fitted to training boxes")
    s.add_argument("datalist", help="datalist JSON with corner boxes in pixels (e.g. from node21_datalist)")
    s.add_argument("--split", default="training")
    s.add_argument("--box-key", default="box", help="item key of the (N, 4) x_min, y_min, x_max, y_max boxes")
    s.add_argument("--scale", type=float, default=1.0,
                   help="training image size / original image size (the bundle's image_size / the file's size)")
    s.add_argument("--n-levels", type=int, default=5, help="FPN levels (5 for Faster R-CNN and RetinaNet)")
    s.add_argument("--sizes-per-level", type=int, default=1)
    s.add_argument("--n-ratios", type=int, default=3)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_anchors)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
