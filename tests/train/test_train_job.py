"""jobs/train.py's flags reach the configuration it trains; a missing SoundFont or a setting out of range stops
it before Ray starts."""
from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from mer.config import preset
from mer.evaluation.paper import MUSESCORE_LITE

ROOT = Path(__file__).resolve().parents[2]


def train_job():
    spec = importlib.util.spec_from_file_location("train_job", ROOT / "jobs" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_timbre_flags_reach_the_config_and_the_rest_stays_the_presets() -> None:
    job = train_job()
    plain = job.build_config(job.parse_args([]))
    assert plain == dataclasses.replace(preset("default"), training=plain.training)
    assert plain.training.extra_soundfonts == () and plain.model.mfcc_mean_norm  # the default centres MFCCs
    both = job.build_config(job.parse_args(["--extra-soundfont", MUSESCORE_LITE, "--no-mfcc-mean-norm"]))
    assert both.training.extra_soundfonts == (MUSESCORE_LITE,) and not both.model.mfcc_mean_norm
    assert both.features == plain.features  # validation and test stay on the feature config's SoundFont
    assert job.build_config(job.parse_args(["--preset", "paper", "--mfcc-mean-norm"])).model.mfcc_mean_norm


def test_the_texture_flag_turns_the_wider_summary_on_and_off_and_only_that() -> None:
    job = train_job()
    plain = job.build_config(job.parse_args([]))
    for flag, wanted in (("--summary-texture", True), ("--no-summary-texture", False)):
        config = job.build_config(job.parse_args([flag]))
        assert config.model == dataclasses.replace(plain.model, summary_texture=wanted)
        assert config.training == plain.training and config.features == plain.features


def test_the_kernel_head_flag_reaches_the_model_and_only_it_and_needs_a_head() -> None:
    job = train_job()
    plain = job.build_config(job.parse_args([]))  # the default preset has a summary head
    config = job.build_config(job.parse_args(["--summary-kernel-centres", "1000"]))
    assert config.model == dataclasses.replace(plain.model, summary_kernel_centres=1000)
    assert config.training == plain.training and config.features == plain.features
    with pytest.raises(ValueError, match="needs summary_head=True"):  # the paper's model has no head
        job.build_config(job.parse_args(["--preset", "paper", "--summary-kernel-centres", "1000"]))


def test_the_symbolic_input_flags_reach_the_model_and_only_it() -> None:
    job = train_job()
    plain = job.build_config(job.parse_args([]))
    notes = job.build_config(job.parse_args(["--symbolic-input", "notes", "--symbolic-max-tokens", "0"]))
    assert notes.model == dataclasses.replace(plain.model, symbolic_input="notes", symbolic_max_tokens=0)
    assert notes.training == plain.training and notes.features == plain.features
    assert plain.model.symbolic_input == "tokens" and plain.model.symbolic_max_tokens == 512


def test_training_flags_reach_the_config_and_default_to_the_presets() -> None:
    job = train_job()
    for name in ("default", "paper"):
        plain = job.build_config(job.parse_args(["--preset", name]))
        assert plain.training.transpose_semitones == preset(name).training.transpose_semitones
        assert plain.training.weight_average_decay == preset(name).training.weight_average_decay
        assert plain.training.label_smoothing == preset(name).training.label_smoothing
        assert plain.training.transpose_audio == preset(name).training.transpose_audio
        assert plain.training.va_loss_weight == preset(name).training.va_loss_weight
    chosen = job.build_config(job.parse_args(["--transpose-semitones", "6", "--weight-average", "0.98",
                                              "--label-smoothing", "0.1", "--transpose-audio", "rendered",
                                              "--va-loss-weight", "0.25"]))
    assert chosen.training.transpose_semitones == 6 and chosen.training.weight_average_decay == 0.98
    assert chosen.training.label_smoothing == 0.1 and chosen.training.transpose_audio == "rendered"
    assert chosen.training.va_loss_weight == 0.25
    assert dataclasses.replace(chosen.training, transpose_semitones=0, weight_average_decay=0.0,
                               label_smoothing=0.0, transpose_audio="rolled", va_loss_weight=1.0) == \
        job.build_config(job.parse_args([])).training  # nothing else moved


def test_refit_flags_reach_the_training_config_and_only_it() -> None:
    job = train_job()
    plain = job.build_config(job.parse_args([]))
    assert (plain.training.checkpoint, plain.training.fit_on) == ("best_val", "train")
    assert (plain.training.summary_c, plain.training.summary_blend, plain.training.temperature) == (None,) * 3
    refit = job.build_config(job.parse_args(["--fit-on", "train+val", "--checkpoint", "last", "--summary-c", "0.1",
                                             "--summary-blend", "0.4", "--temperature", "1.3"]))
    assert dataclasses.replace(plain, training=dataclasses.replace(
        plain.training, checkpoint="last", fit_on="train+val", summary_c=0.1, summary_blend=0.4,
        temperature=1.3)) == refit


def test_a_missing_soundfont_is_named_and_nothing_starts(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.sf2"
    done = subprocess.run([sys.executable, str(ROOT / "jobs" / "train.py"), "--extra-soundfont", str(missing),
                           "--storage", str(tmp_path / "runs")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert str(missing) in done.stderr and "no such file" in done.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("flags, named", [
    (["--weight-average", "1.0"], "weight_average_decay"),
    (["--label-smoothing", "-0.1"], "label_smoothing"),
    (["--transpose-semitones", "-3"], "transpose_semitones"),
    (["--va-loss-weight", "-1"], "va_loss_weight"),
    (["--transpose-semitones", "6", "--transpose-audio", "rendered", "--extra-soundfont", MUSESCORE_LITE],
     "extra_soundfonts"),
    (["--fit-on", "train+val", "--temperature", "1.2"], "checkpoint='last'"),
    (["--fit-on", "train+val", "--checkpoint", "last"], "temperature"),
    (["--summary-blend", "2"], "summary_blend"),
])
def test_a_training_setting_out_of_range_is_named_before_ray_starts(flags, named, capsys, monkeypatch) -> None:
    job = train_job()
    monkeypatch.setattr(job.ray, "init", lambda *a, **k: pytest.fail("Ray started despite a bad setting"))
    assert job.main(flags) == 2
    assert named in capsys.readouterr().err
