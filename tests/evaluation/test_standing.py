"""The README's "Where we stand" is the headline report's numbers, not a hand-copied version of them."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mer.evaluation import read_headline, replace_section, where_we_stand
from mer.evaluation.standing import BEGIN, END

ROOT = Path(__file__).resolve().parents[2]
HEADLINE = ROOT / "tests" / "benchmarks" / "results" / "headline"


def section_of(readme: str) -> str:
    return readme[readme.index(BEGIN) + len(BEGIN) : readme.index(END)].strip("\n")


def test_the_readme_says_what_the_headline_report_says() -> None:
    readme = (ROOT / "README.md").read_text()
    assert section_of(readme) == where_we_stand(*read_headline(HEADLINE)).strip("\n"), (
        "README.md's 'Where we stand' is out of date: run jobs/evaluate.py --readme tests/benchmarks/results/headline")


def test_every_seed_of_the_default_configuration_reaches_the_section_and_its_mean_moves_with_it() -> None:
    report, robustness = read_headline(HEADLINE)
    default = next(m for m in report["methods"] if m["key"] == "default")
    before = where_we_stand(report, robustness)
    for run in default["runs"]:
        assert f"`{run['version']}`" in before and f"{run['metrics']['4q']:.3f}" in before

    # One more seed scoring 1.0 raises the headline mean; the section follows the report.
    changed = copy.deepcopy(report)
    extra = copy.deepcopy(default["runs"][0])
    extra.update(seed=99, version="v-extra", metrics={"4q": 1.0, "arousal": 1.0, "valence": 1.0})
    next(m for m in changed["methods"] if m["key"] == "default")["runs"].append(extra)
    after = where_we_stand(changed, robustness)
    assert f"**{len(default['runs']) + 1} seeds**" in after and "`v-extra`" in after
    assert after != before


def test_the_section_is_replaced_between_its_markers_and_nothing_else_changes() -> None:
    text = f"# Title\n\nbefore\n{BEGIN}\nold numbers\n{END}\nafter\n"
    once = replace_section(text, "new numbers")
    assert once == f"# Title\n\nbefore\n{BEGIN}\nnew numbers\n{END}\nafter\n"
    assert replace_section(once, "new numbers") == once  # rewriting with the same report changes nothing
    with pytest.raises(ValueError, match="markers"):
        replace_section("# a README without markers\n", "numbers")
    with pytest.raises(ValueError, match="markers"):
        replace_section(f"{END}\n{BEGIN}\n", "numbers")


def test_the_job_rewrites_only_its_own_readme_section(tmp_path: Path) -> None:
    # The job's --readme rewrites the README of its checkout: run a copy of jobs/ beside a copied README.
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "evaluate.py").write_text((ROOT / "jobs" / "evaluate.py").read_text())
    (tmp_path / "README.md").write_text(f"intro\n{BEGIN}\nstale\n{END}\nrest\n")
    done = subprocess.run([sys.executable, str(tmp_path / "jobs" / "evaluate.py"), "--readme", str(HEADLINE)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    written = (tmp_path / "README.md").read_text()
    assert written.startswith(f"intro\n{BEGIN}\n") and written.endswith(f"{END}\nrest\n")
    assert section_of(written) == where_we_stand(*read_headline(HEADLINE)).strip("\n")
    report = json.loads((HEADLINE / "report.json").read_text())
    default = next(m for m in report["methods"] if m["key"] == "default")
    assert all(f"`{run['version']}`" in written for run in default["runs"])  # the seed-by-seed table


def test_each_configuration_gets_its_timbre_row_and_the_target_follows_the_drop() -> None:
    report, robustness = read_headline(HEADLINE)

    def robustness_of(method: str, pairs: list[tuple[float, float]], val: bool = False,
                      versions: list[str] | None = None) -> dict:
        versions = versions or [f"{method}-{i}" for i in range(len(pairs))]
        calibrated = {"uncalibrated": 1.0, "calibrated": 0.9}
        rows = [{"model": f"seed {i}", "version": version, "temperature": 1.0, "test_nll": calibrated,
                 "test_ece": calibrated, "trained SoundFont": {"4q": a}, "FluidR3_GM": {"4q": b}}
                for i, ((a, b), version) in enumerate(zip(pairs, versions))]
        for row in rows if val else ():
            row["val"] = {"trained SoundFont": {"4q": row["trained SoundFont"]["4q"] + 0.1},
                          "FluidR3_GM": {"4q": row["FluidR3_GM"]["4q"] + 0.1}}
        return {"method": method, "rows": rows, "throughput_cpu": {"members": len(rows)}}

    default_versions = [run["version"] for m in report["methods"] if m["key"] == "default" for run in m["runs"]]
    section = where_we_stand(report, [
        robustness_of("default_two_pianos", [(0.70, 0.69), (0.60, 0.60), (0.65, 0.64)], val=True),
        robustness_of("default_network", [(0.70, 0.50), (0.60, 0.58), (0.65, 0.55)]),
        robustness_of("default_no_cmn_two_pianos", [(0.70, 0.70), (0.60, 0.59)]),
        # recorded under the name its configuration had then, by a retrain of the default row's seed 0 (the same
        # weights under another time stamp): it belongs to the default row now
        robustness_of("an_old_name", [(0.70, 0.60)],
                      versions=["20990101-000000-" + default_versions[0].rsplit("-", 1)[-1]])])
    timbre = {line.split(" | ")[0].lstrip("| "): line for line in section.splitlines()
              if line.startswith("| Default") and line.count("|") == 9}
    pianos = timbre["Default trained on two SoundFonts (TimGM6mb, MuseScore General Lite)"]
    network = timbre["Default without the summary head or cepstral mean normalisation (network alone)"]
    # Three seeds or more: the target follows the mean drop.
    assert "| 0, 1, 2 | 0.750 ± 0.050 | 0.743 ± 0.045 | 0.650 ± 0.050 | 0.643 ± 0.045 | 0.7 ± 0.6 | met |" in pianos
    assert "| 0, 1, 2 |  |  | 0.650 ± 0.050 | 0.543 ± 0.040 | 10.7 ± 9.0 | **not met** |" in network  # no val
    # Fewer: the row says how the mean stands and that it is too few seeds to claim it.
    two_seeds = timbre["Default without cepstral mean normalisation, trained on two SoundFonts"]
    assert "| 0.5 ± 0.7 | met on 2 seeds (too few to say) |" in two_seeds
    assert "| 0 |  |  | 0.700 ± 0.000 | 0.600 ± 0.000 | 10.0 ± 0.0 | not met on 1 seed (too few to say) |" in \
        timbre["Default configuration (best on val)"]
    assert "an_old_name" not in section


def test_the_section_says_how_far_the_test_songs_resolve_the_default() -> None:
    from mer.evaluation.intervals import song_bootstrap
    from mer.evaluation.results import EvalResult

    report, robustness = read_headline(HEADLINE)
    default = next(m for m in report["methods"] if m["key"] == "default")
    interval = song_bootstrap([EvalResult.from_dict(run) for run in default["runs"]])
    assert interval["low"] <= default["ours"]["4q"]["mean"] <= interval["high"]
    assert f"{interval['songs']} songs" in where_we_stand(report, robustness)
    assert f"{interval['low']:.3f}-{interval['high']:.3f}" in where_we_stand(report, robustness)
