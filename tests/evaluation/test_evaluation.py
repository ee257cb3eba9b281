"""Evaluation on the EMOPIA test split and the Table I + Table III report, on a small EMOPIA subset.

One local Ray (2 CPUs) serves the module. The tables need 15 trained models (5 variants x 3 seeds); Ray Train
spends ~30 s starting workers per run, so 14 of them are trained here in-process (a few real optimisation steps of
a tiny model, written as real artifacts with the training data's fingerprint) and :func:`run_tables` must find
and reuse them; the 15th (the full model, seed 0) it trains itself with ``train_model`` on Ray Train.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import ray

from mer.config import QUADRANTS, MerConfig
from mer.errors import ConfigError
from mer.evaluation.evaluate import evaluate_artifact
from mer.evaluation.merge import merge_reports
from mer.evaluation.paper import METHODS, method_config, method_key
from mer.evaluation.report import write_evaluation, write_tables
from mer.evaluation.results import RUN_FIELDS, EvalResult, TablesReport
from mer.evaluation.robustness import SECOND_SOUNDFONT, robustness_report
from mer.evaluation.tables import find_artifact, headless_config, run_tables, split_clips
from mer.features import soundfont_path
from mer.features.cache import FeatureCache
from mer.model import MerModel
from mer.model.artifact import latest_version, load_artifact, save_artifact
from mer.storage import open_store
from mer.train.dataset import data_fingerprint, extract_clips, window_table
from mer.train.emopia import emopia_root, load_split
from mer.train.loop import select_clips
from mer.train.scores import quadrant_metrics
from tiny import tiny_config as tiny
from tiny import train_in_process

ROOT = Path(__file__).resolve().parents[2]
SUBSET = 16  # train clips; val 4, test 8 (split_clips)
SEEDS = (0, 1, 2)
TRAINED_BY_TABLES = ("full", 0)  # the one model run_tables must train itself


def tiny_config() -> MerConfig:
    return tiny(training=dict(epochs=1, batch_size=8, num_workers=1))

# ---------------------------------------------------------------------------------------------------------------
# A small EMOPIA: trained models, the tables
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("evaluation")


@pytest.fixture(scope="module")
def tables(ray_cluster, emopia: Path, workdir: Path):
    """run_tables over the small subset, 3 seeds, 1 epoch; 14 of the 15 models already in the storage."""
    storage, cache = str(workdir / "storage"), FeatureCache(workdir / "cache")
    base = tiny_config()
    splits = split_clips(emopia, subset=SUBSET)
    items = {s: extract_clips(splits[s], config=base.features, cache=cache, progress=False).clips
             for s in ("train", "val")}
    fingerprint = data_fingerprint(items)
    train_table, val_table = window_table(items["train"]), window_table(items["val"])
    prepared = {}
    for method in (m for m in METHODS if m.deep and m.preset is None):  # the paper's rows: run_tables' default
        for seed in SEEDS:
            if (method.key, seed) != TRAINED_BY_TABLES:
                config = method_config(base, method, seed=seed)
                prepared[method.key, seed] = train_in_process(config, train_table, val_table,
                                                              fingerprint=fingerprint, storage=storage)
    report = run_tables(emopia=emopia, storage=storage, cache_dir=workdir / "cache", out=workdir / "report",
                        seeds=SEEDS, epochs=1, subset=SUBSET, workers=1, base_config=base, progress=True)
    return report, prepared, fingerprint


def test_the_report_has_every_row_with_mean_std_and_the_papers_numbers(tables, workdir: Path):
    report, _, _ = tables
    markdown = (workdir / "report" / "report.md").read_text()
    data = json.loads((workdir / "report" / "report.json").read_text())
    paper_rows = [m for m in METHODS if m.preset is None]  # the default configuration's row only on request
    assert [m["key"] for m in data["methods"]] == [m.key for m in paper_rows]  # all 7 rows of the paper
    table = markdown.split("## Table I + Table III", 1)[1].split("## Runs", 1)[0]  # not the per-seed "Runs" table
    table_rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    for method, row in zip(paper_rows, data["methods"]):
        assert row["paper"] == method.paper
        assert row["seeds"] == list(SEEDS)
        line = table_rows[method.label]
        for metric in ("4q", "arousal", "valence"):
            values = [run["metrics"][metric] for run in row["runs"]]
            assert row["ours"][metric]["mean"] == pytest.approx(np.mean(values))
            assert row["ours"][metric]["std"] == pytest.approx(np.std(values, ddof=1))
            assert f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}" in line
            assert f"{method.paper[metric]:.3f}" in line
    assert "0.692" in markdown and "0.884" in markdown and "0.869" in markdown
    assert "FluidSynth" in markdown and "Training budget" in markdown and "1 epoch" in markdown
    assert data["setup"]["clips"] == {"train": SUBSET, "val": 4, "test": 8}


def test_every_run_is_scored_from_its_own_test_predictions(tables):
    report, _, _ = tables
    for runs in report.results.values():
        for result in runs:
            record = result.to_dict()
            true = np.array([int(p["true"][1]) - 1 for p in record["predictions"]])
            pred = np.array([int(np.argmax(p["probs"])) for p in record["predictions"]])
            assert len(true) == 8
            assert record["metrics"] == pytest.approx(quadrant_metrics(true, pred))
            assert np.sum(record["confusion"]) == 8


def test_tables_reuse_stored_models_and_train_only_the_missing_one(tables, workdir: Path):
    report, prepared, fingerprint = tables
    versions = {(r.method, r.seed): r.version for runs in report.results.values() for r in runs if r.version}
    for key, url in prepared.items():
        assert versions[key] == url.rsplit("/", 1)[-1]
    trained = load_artifact(versions[TRAINED_BY_TABLES], storage=str(workdir / "storage"))
    assert trained.url not in prepared.values()
    # The tables never move what the tagger serves: LATEST is still the last model saved before they ran.
    assert latest_version(str(workdir / "storage")) == list(prepared.values())[-1].rsplit("/", 1)[-1]
    assert "run" in trained.meta  # written by train_model (Ray Train), not by the in-process helper
    assert trained.meta["data_fingerprint"] == fingerprint
    # Another epoch budget is another model: nothing to reuse.
    config = method_config(tiny_config(), next(m for m in METHODS if m.key == "full"), seed=0)
    assert find_artifact(str(workdir / "storage"), config, fingerprint) == trained.url
    longer = dataclasses.replace(config, training=dataclasses.replace(config.training, epochs=2))
    assert find_artifact(str(workdir / "storage"), longer, fingerprint) is None


def test_find_artifact_finds_the_newest_match_in_s3_and_skips_incomplete_folders(s3_endpoint: str,
                                                                                 s3_bucket: str) -> None:
    storage = f"s3://{s3_bucket}/mer"
    assert find_artifact(storage, tiny_config(), "fp", endpoint_url=s3_endpoint) is None  # no models yet
    config = method_config(tiny_config(), next(m for m in METHODS if m.key == "full"), seed=0)
    weights = MerModel(config).state_dict()
    urls = [save_artifact(weights, config=config, storage=storage, meta={"data_fingerprint": "fp"}, version=v,
                          endpoint_url=s3_endpoint) for v in ("v1", "v2", "v3")]
    save_artifact(weights, config=config, storage=storage, meta={"data_fingerprint": "other"}, version="v4",
                  endpoint_url=s3_endpoint)
    open_store(urls[2], endpoint_url=s3_endpoint).delete("model.pt")  # v3: half-written
    assert find_artifact(storage, config, "fp", endpoint_url=s3_endpoint) == urls[1]
    assert find_artifact(storage, config, "none", endpoint_url=s3_endpoint) is None


def test_a_rerun_trains_nothing(tables, emopia: Path, workdir: Path, capfd):  # progress goes to the process's stdout
    report, _, _ = tables
    again = run_tables(emopia=emopia, storage=str(workdir / "storage"), cache_dir=workdir / "cache",
                       out=workdir / "again", seeds=SEEDS, epochs=1, subset=SUBSET, workers=1,
                       base_config=tiny_config(), methods=["full", "no_mhsa"])
    lines = capfd.readouterr().out.splitlines()
    assert sum("reusing trained model" in line for line in lines) == 6
    assert not any("training 1 epoch" in line for line in lines)
    for key in ("full", "no_mhsa"):
        assert [r.version for r in again.results[key]] == [r.version for r in report.results[key]]
        assert [r.metrics for r in again.results[key]] == [r.metrics for r in report.results[key]]


def test_the_pictures_are_valid_images(tables, workdir: Path):
    report, _, _ = tables
    pngs = sorted((workdir / "report").glob("*.png"))
    assert {p.stem for p in pngs} == {f"confusion_{m.key}" for m in METHODS if m.preset is None} | {"attention_full"}
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(png)
        assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 500
        assert image[..., :3].std() > 0.05  # not a blank canvas


def test_evaluate_artifact_scores_each_clip_once(tables, emopia: Path, workdir: Path):
    report, _, _ = tables
    version = report.results["full"][0].version
    artifact = load_artifact(version, storage=str(workdir / "storage"), device="cpu")
    clips = split_clips(emopia, subset=SUBSET)["test"]
    result = evaluate_artifact(artifact, clips=clips, cache=FeatureCache(workdir / "cache"), device="cpu")

    assert result.names == [c.name for c in clips]
    assert result.probs.shape == (8, 4)
    np.testing.assert_allclose(result.probs.sum(axis=1), 1.0, rtol=1e-5)
    true = np.array([c.quadrant for c in clips])
    # The confusion matrix counts each clip once, in its true quadrant's row.
    assert result.confusion.shape == (4, 4) and result.confusion.sum() == len(clips)
    assert result.confusion.sum(axis=1).tolist() == np.bincount(true, minlength=4).tolist()
    metrics = result.metrics
    assert metrics["4q"] == pytest.approx(np.trace(result.confusion) / len(clips))
    # A right quadrant is a right arousal and a right valence: the binary scores are never below 4Q.
    assert metrics["4q"] <= metrics["arousal"] <= 1.0 and metrics["4q"] <= metrics["valence"] <= 1.0
    # Every clip has all three branches, so the attention each receives sums to 1 over the branches.
    assert result.attention.shape == (8, 3)
    np.testing.assert_allclose(result.attention.sum(axis=1), 1.0, rtol=1e-5)
    assert result.attention_by_quadrant.shape == (4, 3)
    # The same model scored inside the tables gave the same predictions.
    np.testing.assert_allclose(result.probs, report.results["full"][0].probs, rtol=1e-5)

    paths = write_evaluation(result, workdir / "single")
    assert {p.name for p in paths.values()} == {"confusion.png", "attention.png", "evaluation.json", "evaluation.md"}
    assert json.loads(paths["json"].read_text())["metrics"] == pytest.approx(metrics)


def test_a_model_without_attention_reports_no_attention(tables):
    report, _, _ = tables
    assert all(r.attention is None and r.attention_by_quadrant is None for r in report.results["no_mhsa"])
    single = report.results["harmony"][0]
    np.testing.assert_allclose(single.attention, [[0.0, 1.0, 0.0]] * 8, atol=1e-6)  # only itself to attend to


def test_evaluate_job_writes_a_report_for_one_model(tables, emopia: Path, workdir: Path):
    report, _, _ = tables
    version = report.results["tone"][1].version
    out = workdir / "job"
    done = subprocess.run(
        [sys.executable, "jobs/evaluate.py", "--model", version, "--storage", str(workdir / "storage"),
         "--cache-dir", str(workdir / "cache"), "--emopia", str(emopia), "--subset", "3", "--out", str(out),
         "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"model {version} on 3 test clips" in done.stdout
    assert (out / "evaluation.md").is_file() and (out / "confusion.png").is_file()
    assert len(json.loads((out / "evaluation.json").read_text())["predictions"]) == 3


def test_evaluate_job_says_what_is_missing(tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "jobs/evaluate.py", "--storage", str(tmp_path / "empty"), "--out", str(tmp_path / "out"),
         "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 1
    assert "no trained model" in done.stderr and "Traceback" not in done.stderr


# ---------------------------------------------------------------------------------------------------------------
# Pooling reports of separate runs (seeds trained on different days)
# ---------------------------------------------------------------------------------------------------------------

def _report_of_seeds(report, seeds, out: Path, *, setup=None) -> Path:
    """Write the runs of ``seeds`` of a tables report as a report of its own, as a --tables run of those seeds."""
    part = TablesReport(results={k: [r for r in runs if r.seed in seeds] for k, runs in report.results.items()},
                        setup={**report.setup, "seeds": list(seeds), **(setup or {})})
    write_tables(part, out)
    return out / "report.json"


def _predict_otherwise(run: dict) -> dict:
    """A written run's first clip moved to another quadrant, its metrics recomputed: the same seed, another model."""
    first = run["predictions"][0]
    changed = (int(np.argmax(first["probs"])) + 1) % 4
    first["probs"], first["pred"] = np.eye(4)[changed].tolist(), f"Q{changed + 1}"
    run["metrics"] = EvalResult.from_dict(run).metrics
    return run


def test_reports_of_separate_seeds_pool_into_the_report_of_all_seeds(tables, tmp_path: Path):
    report, _, _ = tables
    parts = [_report_of_seeds(report, (0,), tmp_path / "seed0"),
             _report_of_seeds(report, (1, 2), tmp_path / "seeds12"),
             _report_of_seeds(report, (1,), tmp_path / "seed1-again")]  # a seed twice is kept once
    merged = merge_reports(parts)
    assert set(merged.results) == set(report.results)
    for key, runs in report.results.items():
        assert [r.seed for r in merged.results[key]] == list(SEEDS)
        assert [r.version for r in merged.results[key]] == [r.version for r in runs]
        for metric, summary in report.summary(key).items():
            assert merged.summary(key)[metric] == pytest.approx(summary)
        for pooled, original in zip(merged.results[key], runs):
            assert (pooled.confusion == original.confusion).all()
            if original.attention is None:
                assert pooled.attention is None
            else:
                np.testing.assert_allclose(pooled.attention_by_quadrant, original.attention_by_quadrant, atol=1e-5)
    paths = write_tables(merged, tmp_path / "merged")
    markdown = paths["markdown"].read_text()
    assert "summed over the 3 pooled reports" in markdown and str(parts[1]) in markdown
    assert {p.name for p in (tmp_path / "merged").glob("*.png")} == {p.name for p in report.paths.values()
                                                                   if p.suffix == ".png"}


def test_a_renamed_configuration_moves_its_runs_to_its_new_row_and_says_so(tables, tmp_path: Path):
    report, _, _ = tables
    path = _report_of_seeds(report, SEEDS, tmp_path / "all")
    swapped = merge_reports([path], {"full": "no_mhsa", "no_mhsa": "full"})  # both at once: a swap
    for old, new in (("full", "no_mhsa"), ("no_mhsa", "full")):
        assert [r.version for r in swapped.results[new]] == [r.version for r in report.results[old]]
        assert {r.method for r in swapped.results[new]} == {new}
        assert [r.metrics for r in swapped.results[new]] == [r.metrics for r in report.results[old]]
    markdown = write_tables(swapped, tmp_path / "swapped")["markdown"].read_text()
    assert "`full` → `no_mhsa`" in markdown
    with pytest.raises(ConfigError, match="'fulll' is no report row"):
        merge_reports([path], {"full": "fulll"})


def test_pooling_only_some_rows_leaves_a_retrained_seed_of_another_row_out(tables, tmp_path: Path):
    report, _, _ = tables
    pooled = _report_of_seeds(report, SEEDS, tmp_path / "pooled")
    data = json.loads(pooled.read_text())  # a screen that retrained no_mhsa's seed 0 elsewhere beside its new rows
    _predict_otherwise(next(m for m in data["methods"] if m["key"] == "no_mhsa")["runs"][0])
    screen = tmp_path / "screen.json"
    screen.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="no_mhsa seed 0 predicts differently"):
        merge_reports([pooled, screen])
    others = [key for key in report.results if key != "no_mhsa"]
    merged = merge_reports([pooled, screen], methods=others)
    assert sorted(merged.results) == sorted(others)
    for key in others:
        assert [r.version for r in merged.results[key]] == [r.version for r in report.results[key]]
    with pytest.raises(ConfigError, match="'fulll'"):
        merge_reports([pooled], methods=["full", "fulll"])


def test_a_written_run_reads_back_with_its_own_fields_apart_from_the_extras(tables):
    report, _, _ = tables
    for runs in report.results.values():
        for run in runs:
            written = run.to_dict()
            assert set(written) - set(run.extra) == RUN_FIELDS  # a field added to to_dict must be known to from_dict
            back = EvalResult.from_dict(json.loads(json.dumps(written)))
            assert back.extra == run.extra and back.metrics == run.metrics
            assert (back.method, back.seed, back.version, back.branches) == (run.method, run.seed, run.version,
                                                                             run.branches)


def test_reports_without_per_clip_attention_keep_their_attention_by_quadrant(tables, tmp_path: Path):
    report, _, _ = tables
    path = _report_of_seeds(report, SEEDS, tmp_path / "all")
    data = json.loads(path.read_text())
    for method in data["methods"]:  # as written before per-clip attention was recorded
        for run in method["runs"]:
            for prediction in run["predictions"]:
                prediction.pop("attention", None)
    path.write_text(json.dumps(data))
    merged = merge_reports([path])
    for run in merged.results["full"]:
        original = next(r for r in report.results["full"] if r.seed == run.seed)
        np.testing.assert_allclose(run.attention_by_quadrant, original.attention_by_quadrant, atol=1e-5)


def test_reports_of_other_settings_or_disagreeing_seeds_are_refused(tables, tmp_path: Path):
    report, _, _ = tables
    seed0 = _report_of_seeds(report, (0,), tmp_path / "seed0")
    longer = _report_of_seeds(report, (1,), tmp_path / "longer",
                              setup={"training": {**report.setup["training"], "epochs": 2}})
    with pytest.raises(ConfigError, match=r"longer/report.json: setup field 'training' differs"):
        merge_reports([seed0, longer])

    data = json.loads(seed0.read_text())  # the same seed, other predictions: not the same model
    run = _predict_otherwise(data["methods"][0]["runs"][0])
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="full seed 0 predicts differently"):
        merge_reports([seed0, other])
    run["metrics"] = {"4q": 1.0, "arousal": 1.0, "valence": 1.0}  # metrics that do not follow from predictions
    other.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="do not follow from the recorded predictions"):
        merge_reports([other])


def test_evaluate_job_merges_reports_and_names_a_bad_one(tables, tmp_path: Path):
    report, _, _ = tables
    parts = [str(_report_of_seeds(report, (s,), tmp_path / f"seed{s}")) for s in SEEDS]
    done = subprocess.run([sys.executable, "jobs/evaluate.py", "--merge", *parts, "--out", str(tmp_path / "all")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    s = report.summary("full")["4q"]
    assert f"{s['mean']:.3f} ± {s['std']:.3f}" in next(line for line in done.stdout.splitlines()
                                                       if line.startswith("Full model"))
    assert json.loads((tmp_path / "all" / "report.json").read_text())["setup"]["seeds"] == list(SEEDS)

    (tmp_path / "bad.json").write_text("{not json")
    done = subprocess.run([sys.executable, "jobs/evaluate.py", "--merge", parts[0], str(tmp_path / "bad.json"),
                           "--out", str(tmp_path / "bad")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "bad.json: not a JSON report" in done.stderr and "Traceback" not in done.stderr


def test_the_reliability_diagram_is_a_picture_of_every_clip(tmp_path, rng):
    from mer.evaluation import plot_reliability

    probs = rng.dirichlet(np.ones(4), 200)
    path = plot_reliability(probs, rng.integers(0, 4, 200), tmp_path / "reliability.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_deep_row_is_recognised_from_the_configuration_it_trains() -> None:
    # A report names a model's row from its saved config: each row's config (any seed, any workers) maps back to it.
    for method in (m for m in METHODS if m.deep):
        for seed, workers in ((0, 2), (3, 1)):
            base = dataclasses.replace(MerConfig(), training=dataclasses.replace(MerConfig().training,
                                                                               num_workers=workers))
            assert method_key(method_config(base, method, seed=seed)) == method.key, method.key
    # A preset's model trained otherwise than any row says is no row (least of all the paper's "full").
    default = method_config(MerConfig(), next(m for m in METHODS if m.key == "default"), seed=0)
    for training in ({"epochs": 20}, {"extra_soundfonts": ("/elsewhere/piano.sf2",)}):
        assert method_key(dataclasses.replace(default, training=dataclasses.replace(default.training, **training))
                          ) == "custom"


def test_a_row_with_a_linear_summary_head_may_reuse_its_network_trained_alone_and_a_kernel_head_row_may_not() -> None:
    # --tables fits a linear head to a stored network trained without one (no retraining); a kernel head's row
    # (its centres fitted with its model) trains its own, and asking must not fail on its configuration.
    for method in (m for m in METHODS if m.deep):
        config = method_config(MerConfig(), method, seed=0)
        alone = headless_config(config)
        if not config.model.summary_head or config.model.summary_kernel_centres:
            assert alone is None, method.key
        else:
            assert not alone.model.summary_head, method.key
            assert dataclasses.replace(alone, model=dataclasses.replace(alone.model, summary_head=True)) == config
    assert any(m.deep and method_config(MerConfig(), m, seed=0).model.summary_kernel_centres for m in METHODS)


def test_an_explicit_epoch_budget_reaches_every_deep_row_and_nothing_else() -> None:
    # `--tables/--crossval --epochs N` trains every row N epochs, the default's preset rows too; without it each row
    # keeps its own (the paper's rows the base config's, the default's rows their preset's).
    base = MerConfig()
    for method in (m for m in METHODS if m.deep):
        own = method_config(base, method, seed=0)
        budgeted = method_config(base, method, seed=0, epochs=own.training.epochs + 3)
        assert budgeted.training.epochs == own.training.epochs + 3, method.key
        assert dataclasses.replace(budgeted, training=dataclasses.replace(
            budgeted.training, epochs=own.training.epochs)) == own, method.key


def small_emopia(root: Path, counts: dict[str, int]) -> Path:
    """EMOPIA's layout with the first ``counts[split]`` clips of each split (quadrant-balanced), symlinked."""
    (root / "midis").mkdir(parents=True)
    (root / "split").mkdir()
    for split, count in counts.items():
        clips = select_clips(load_split(emopia_root(), split), count)
        for clip in clips:
            (root / "midis" / clip.midi_path.name).symlink_to(clip.midi_path)
        (root / "split" / f"{split}.csv").write_text(
            "fname,label\n" + "".join(f"{c.name},{QUADRANTS[c.quadrant]}\n" for c in clips))
    return root


def test_robustness_scores_each_model_on_both_timbres_and_their_ensemble(ray_cluster, tmp_path: Path) -> None:
    emopia = small_emopia(tmp_path / "emopia", {"train": 8, "val": 4, "test": 4})
    storage, cache = str(tmp_path / "storage"), FeatureCache(tmp_path / "cache")
    config = tiny_config()
    items = {s: extract_clips(load_split(emopia, s), config=config.features, cache=cache, progress=False).clips
             for s in ("train", "val")}
    tables = {s: window_table(v) for s, v in items.items()}
    models = [train_in_process(dataclasses.replace(config, training=dataclasses.replace(config.training, seed=s)),
                               tables["train"], tables["val"], fingerprint=data_fingerprint(items), storage=storage)
              for s in (0, 1)]

    report = robustness_report(models, storage=storage, cache_dir=tmp_path / "cache", out=tmp_path / "two",
                               emopia=emopia, progress=False)
    assert report["method"] == method_key(config)
    assert [r["model"] for r in report["rows"]] == ["seed 0", "seed 1", "ensemble"]
    for row in report["rows"]:
        for timbre in ("trained SoundFont", Path(SECOND_SOUNDFONT).stem):
            assert set(row[timbre]) >= {"4q", "arousal", "valence"}
            assert all(0.0 <= row[timbre][m] <= 1.0 for m in ("4q", "arousal", "valence"))
            assert 0.0 <= row["val"][timbre]["4q"] <= 1.0  # val too, on both renderings
    assert report["rows"][0]["version"] == Path(models[0]).name
    assert report["throughput_cpu"]["members"] == 2 and report["throughput_cpu"]["ensemble_windows_per_second"] > 0
    assert (tmp_path / "two" / "reliability.png").stat().st_size > 0
    assert json.loads((tmp_path / "two" / "robustness.json").read_text())["rows"] == report["rows"]
    # The second SoundFont's features were extracted for the test split (they are not the trained ones).
    second = dataclasses.replace(config.features, soundfont=SECOND_SOUNDFONT)
    assert all(cache.get(FeatureCache.key(c.midi_path.read_bytes(), config=second)) is not None
               for split in ("test", "val") for c in load_split(emopia, split))
    with pytest.raises(ConfigError, match="trained with"):  # a piano the models have heard is no timbre test
        robustness_report(models, storage=storage, cache_dir=tmp_path / "cache", out=tmp_path / "heard",
                          emopia=emopia, soundfont=str(soundfont_path(config.features)), progress=False)

    alone = robustness_report(models[:1], storage=storage, cache_dir=tmp_path / "cache", out=tmp_path / "one",
                              emopia=emopia, progress=False)
    assert [r["model"] for r in alone["rows"]] == ["seed 0"]  # one model is no ensemble
    assert "ensemble_windows_per_second" not in alone["throughput_cpu"]
    assert alone["rows"][0] == report["rows"][0]  # the same model, scored the same way


def test_a_run_refitted_on_train_and_val_shows_no_val_score(tables, tmp_path: Path):
    """Its val score is in-sample: the runs table leaves it blank instead of printing a number that says nothing."""
    report, _, _ = tables
    runs = report.results["full"]
    refit = dataclasses.replace(runs[0], extra={**runs[0].extra, "fitted_on": "train+val"})
    write_tables(dataclasses.replace(report, results={"full": [refit, *runs[1:]]}), tmp_path)
    lines = {line.split(" | ")[2]: line for line in (tmp_path / "report.md").read_text().split("## Runs")[1]
             .splitlines() if line.startswith("| Full model")}
    for run in runs:
        val_cell = lines[run.version].split(" | ")[3]
        assert val_cell == ("" if run is runs[0] else f"{run.extra['val_metrics']['4q']:.3f}")
