"""Evaluate on the EMOPIA test split: one model artifact, or the paper's Table I + Table III reproduction.

One model (by path, URL or version id under --storage; default the storage's LATEST):
    python jobs/evaluate.py --model 20250101-120000-abcd1234 --storage ./mer_runs --out ./reports/latest

The tables (trains what is missing — each variant x seed — and reuses artifacts already in --storage):
    python jobs/evaluate.py --tables --seeds 0 1 2 --epochs 20 --storage ./mer_runs --out ./reports/tables

Pool the reports of separate --tables runs (e.g. seeds trained on different days; same data and settings):
    python jobs/evaluate.py --merge reports/seed0/report.json reports/seed1/report.json --out ./reports/tables

Song-grouped cross-validation over train + val (5 folds; the rows compared clip by clip; test left alone):
    python jobs/evaluate.py --crossval 5 --methods default_symbolic default_symbolic_no_transpose --seeds 0

Pool cross-validations run separately (same folds; rows compared clip by clip, the first row the reference):
    python jobs/evaluate.py --merge-crossval cv-a/crossval.json cv-b/crossval.json --out ./reports/crossval

The README's "Where we stand", from the headline report (and the robustness reports in its folder):
    python jobs/evaluate.py --readme tests/benchmarks/results/headline

Each writes Markdown + JSON + PNGs (confusion matrix, attention weights) into --out. On a cluster:
``ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/evaluate.py --tables ...``
(absolute paths for --storage, --emopia and --cache-dir). Flags default to MER_EMOPIA, MER_STORAGE,
MER_CACHE_DIR, AWS_ENDPOINT_URL, RAY_ADDRESS.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import ray

from mer.errors import MerError
from mer.evaluation import (METHODS, TablesReport, evaluate_artifact, merge_crossval, merge_reports, read_headline,
                            replace_section, robustness_report, run_crossval, run_tables, where_we_stand,
                            write_evaluation, write_tables)
from mer.features import FeatureCache
from mer.model import load_artifact
from mer.train import METRICS, emopia_root, load_split, select_clips


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--model", default=None, help="artifact path/URL or version id (default: LATEST in --storage)")
    what.add_argument("--tables", action="store_true", help="reproduce Table I + Table III")
    what.add_argument("--robustness", nargs="+", metavar="MODEL", default=None,
                      help="models of one configuration (one per seed): calibration, their seed ensemble and a "
                           "second SoundFont on the test split")
    what.add_argument("--crossval", type=int, metavar="FOLDS", default=None,
                      help="cross-validate --methods over EMOPIA train + val in FOLDS song-grouped folds (held-out "
                           "fold scored, the next one selects), once per seed; test is not touched")
    what.add_argument("--merge", nargs="+", metavar="REPORT_JSON", default=None,
                      help="pool the report.json files of several --tables runs into one report")
    what.add_argument("--merge-crossval", nargs="+", metavar="CROSSVAL_JSON", default=None,
                      help="pool the crossval.json files of several --crossval runs over the same folds into one "
                           "report (rows in --methods order if given; the first is the reference)")
    what.add_argument("--readme", metavar="HEADLINE_DIR", default=None,
                      help="rewrite README.md's 'Where we stand' from HEADLINE_DIR's report.json and "
                           "robustness*/robustness.json")
    parser.add_argument("--rename", nargs="+", metavar="OLD=NEW", default=[],
                        help="--merge: the runs of row OLD belong to row NEW now (a configuration renamed)")
    parser.add_argument("--emopia", default=os.environ.get("MER_EMOPIA"),
                        help="EMOPIA folder (env MER_EMOPIA; default ../shared/emopia)")
    parser.add_argument("--storage", default=os.environ.get("MER_STORAGE", "./mer_runs"),
                        help="runs and model artifacts: a folder or s3://bucket/prefix (env MER_STORAGE)")
    parser.add_argument("--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL"),
                        help="S3-compatible endpoint for an s3:// storage (env AWS_ENDPOINT_URL; default: AWS)")
    parser.add_argument("--cache-dir", default=os.environ.get("MER_CACHE_DIR"),
                        help="feature cache folder (env MER_CACHE_DIR; default <storage>/feature-cache, "
                             "./mer_runs/feature-cache for S3)")
    parser.add_argument("--out", default="./reports", help="report folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="--tables, --crossval: training seeds")
    parser.add_argument("--epochs", type=int, default=None,
                        help="--tables, --crossval: every deep row's epochs, a preset row's too "
                             "(default: the row's own)")
    parser.add_argument("--workers", type=int, default=None, help="--tables, --crossval: Ray Train workers per model")
    parser.add_argument("--methods", nargs="+", default=None, choices=[m.key for m in METHODS],
                        help="--tables: only these rows (default all); --crossval: the rows (the first is the baseline "
                             "of the paired differences); --merge: pool only these rows' runs")
    parser.add_argument("--subset", type=int, default=None,
                        help="--tables: N training clips (proportional val/test clips), quick runs; "
                             "--crossval: N train + val clips; --model: N test clips (quadrant-balanced)")
    parser.add_argument("--device", default=None, help="evaluation device (default: CUDA when present)")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                        help="Ray cluster address (env RAY_ADDRESS; default: start a local Ray)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines, only the summary")
    return parser.parse_args(argv)


def print_tables(report: TablesReport) -> None:
    """The summary a --tables or --merge run ends with: mean ± std per row, and where the report is."""
    print(f"{'method':<28} " + " ".join(f"{m:>15}" for m in METRICS))
    for method in METHODS:
        if method.key in report.results:
            s = report.summary(method.key)
            print(f"{method.label:<28} " + " ".join(
                f"{s[m]['mean']:.3f} ± {s[m]['std']:.3f}".rjust(15) for m in METRICS))
    print(f"report: {report.paths['markdown']}  {report.paths['json']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cache_dir = args.cache_dir or os.path.join("./mer_runs" if "://" in args.storage else args.storage,
                                               "feature-cache")
    try:
        if args.readme:
            readme = Path(__file__).resolve().parents[1] / "README.md"
            try:
                text = replace_section(readme.read_text(), where_we_stand(*read_headline(args.readme)))
            except ValueError as error:
                print(f"error: {readme}: {error}", file=sys.stderr)
                return 2
            readme.write_text(text)
            print(f"rewrote 'Where we stand' in {readme} from {args.readme}")
        elif args.robustness:
            ray.init(address=args.address or "local")
            report = robustness_report(args.robustness, storage=args.storage, cache_dir=cache_dir, out=args.out,
                                       emopia=args.emopia, endpoint_url=args.endpoint_url, progress=not args.quiet)
            print(json.dumps(report, indent=2))
        elif args.merge:
            renames = dict(pair.split("=", 1) for pair in args.rename if "=" in pair)
            if len(renames) != len(args.rename):
                print(f"error: --rename takes OLD=NEW pairs, got {args.rename}", file=sys.stderr)
                return 2
            report = merge_reports(args.merge, renames, methods=args.methods)
            write_tables(report, args.out)
            print_tables(report)
        elif args.crossval is not None or args.merge_crossval:
            if args.merge_crossval:
                report = merge_crossval(args.merge_crossval, args.out, methods=args.methods)
            elif not args.methods:
                print("error: --crossval needs --methods (the rows to cross-validate)", file=sys.stderr)
                return 2
            else:
                ray.init(address=args.address or "local")
                report = run_crossval(emopia=args.emopia, storage=args.storage, cache_dir=cache_dir, out=args.out,
                                      methods=args.methods, folds=args.crossval, seeds=args.seeds,
                                      epochs=args.epochs, subset=args.subset, workers=args.workers,
                                      device=args.device, progress=not args.quiet, endpoint_url=args.endpoint_url)
            for row in report["methods"]:
                spread = len(row["seeds"]) > 1
                print(f"{row['key']:<36} " + "  ".join(
                    f"{m} {row['ours'][m]['mean']:.3f}" + (f" ± {row['ours'][m]['std']:.3f}" if spread else "")
                    for m in METRICS))
            print(f"report: {Path(args.out) / 'crossval.md'}  {Path(args.out) / 'crossval.json'}")
        elif args.tables:
            ray.init(address=args.address or "local")
            report = run_tables(emopia=args.emopia, storage=args.storage, cache_dir=cache_dir, out=args.out,
                                seeds=args.seeds, epochs=args.epochs, subset=args.subset, workers=args.workers,
                                methods=args.methods, device=args.device, progress=not args.quiet,
                                endpoint_url=args.endpoint_url)
            print_tables(report)
        else:
            artifact = load_artifact(args.model, storage=args.storage, device=args.device,  # fail fast, before Ray
                                     endpoint_url=args.endpoint_url)
            clips = select_clips(load_split(emopia_root(args.emopia), "test"), args.subset)
            ray.init(address=args.address or "local")
            result = evaluate_artifact(artifact, clips=clips, cache=FeatureCache(os.path.abspath(cache_dir)),
                                       device=args.device, progress=not args.quiet)
            paths = write_evaluation(result, args.out, title=f"model {artifact.version}")
            m = result.metrics
            print(f"model {artifact.version} on {len(result.names)} test clips: 4Q {m['4q']:.3f}  "
                  f"arousal {m['arousal']:.3f}  valence {m['valence']:.3f}")
            print("report: " + "  ".join(str(p) for p in paths.values()))
    except MerError as error:  # missing data, no model, bad storage: a message, not a traceback
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
