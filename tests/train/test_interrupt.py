"""A real interrupt: a training run SIGKILLed mid-epoch (every process of its session: the driver, Ray and the Ray
Train workers) and started again with the same command resumes from its latest checkpoint and ends with the weights of
an uninterrupted run of the same command (training is deterministic per seed)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from mer.train import CHECKPOINT_FILE

SCRIPT = Path(__file__).with_name("tiny_run.py")
RUN_NAME = "interrupted"  # tiny_run.RUN_NAME
EPOCHS = 3  # tiny_run.EPOCHS
DEADLINE = 900.0  # seconds: generous, for a loaded 2-core machine; only ever waited on, never asserted


def command(emopia: Path, storage: Path, cache: Path, ray_temp: str) -> list[str]:
    return [sys.executable, str(SCRIPT), str(emopia), str(storage), str(cache), ray_temp]


def checkpoint_states(run: Path) -> dict[int, dict]:
    """The saved state of every complete checkpoint folder of a run, by its epoch (0-based)."""
    states = {}
    for folder in sorted(run.glob("checkpoint_*")):
        try:
            state = torch.load(folder / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError):  # absent or still being written
            continue
        states[int(state["epoch"])] = state
    return states


def registered_epochs(run: Path) -> int:
    """How many epochs the run's latest checkpoint holds, as Ray Train recorded it (what a rerun resumes from:
    the checkpoint manager's snapshot, written once the checkpoint is complete); 0 before the first."""
    try:
        snapshot = json.loads((run / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):  # absent, or being written
        return 0
    latest = snapshot.get("latest_checkpoint_result")
    return int(latest["metrics"]["epoch"]) if latest else 0


def session_processes(session: int) -> list[int]:
    """Ids of the live processes of a session. A run started with ``start_new_session=True`` leads its own
    session; Ray's GCS, raylet and workers stay in it, though each Ray worker takes a process group of its own
    (so ``killpg`` on the run's group would miss them)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[3]) == session and fields[0] != "Z":  # (state, ppid, pgrp, session, ...); Z: already dead
                found.append(int(entry.name))
    return found


def kill_session(session: int) -> list[int]:
    """SIGKILL every process of ``session``, as a power cut would; returns their ids."""
    killed = session_processes(session)
    for pid in killed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return killed


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.2)


@pytest.fixture
def ray_temp():
    """A short folder for a run's Ray files (Ray's socket paths must stay under ~100 characters)."""
    folder = tempfile.mkdtemp(prefix="mer-ray-", dir="/tmp")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_and_ends_with_the_weights_of_an_uninterrupted_run(
        emopia: Path, tmp_path: Path, ray_temp: str) -> None:
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    # The uninterrupted run (it also fills the feature cache both runs read).
    straight = subprocess.run(command(emopia, tmp_path / "straight", cache, ray_temp), env=env,
                              capture_output=True, text=True)
    assert straight.returncode == 0, straight.stdout[-3000:] + straight.stderr[-3000:]

    # The same command in another folder, killed as soon as its first checkpoint is complete.
    run = tmp_path / "killed" / RUN_NAME
    log = (tmp_path / "killed.log").open("w")
    process = subprocess.Popen(command(emopia, tmp_path / "killed", cache, ray_temp), env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: registered_epochs(run) or process.poll() is not None, "the first checkpoint")
        assert process.poll() is None, "the run ended before it could be interrupted"
        killed = kill_session(process.pid)  # the driver, GCS, raylet and the Ray Train workers, all at once
    finally:
        kill_session(process.pid)
        process.wait()
        log.close()
    assert process.returncode == -signal.SIGKILL
    assert len(killed) > 3  # more than the driver: Ray's processes too
    wait_for(lambda: not session_processes(process.pid), "the killed run's processes to end")
    done = registered_epochs(run)
    assert 1 <= done < EPOCHS  # killed after a checkpoint, in the middle of the run
    left = checkpoint_states(run)
    latest = done - 1  # 0-based, as the checkpoints count

    # The same command again: it resumes after the latest checkpoint and finishes.
    rerun = subprocess.run(command(emopia, tmp_path / "killed", cache, ray_temp), env=env, capture_output=True,
                           text=True)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"resuming after epoch {latest + 1} of {EPOCHS}" in rerun.stdout + rerun.stderr

    finished = checkpoint_states(run)
    assert sorted(finished) == list(range(EPOCHS))
    history = finished[EPOCHS - 1]["history"]
    assert [row["epoch"] for row in history] == list(range(1, EPOCHS + 1))
    # The epochs before the kill were not trained again: their records (wall time included) are the first run's.
    assert history[:latest + 1] == left[latest]["history"]

    reference = checkpoint_states(tmp_path / "straight" / RUN_NAME)
    assert [row["train_loss"] for row in history] == pytest.approx(
        [row["train_loss"] for row in reference[EPOCHS - 1]["history"]], rel=1e-6)
    for key, value in reference[EPOCHS - 1]["model"].items():
        torch.testing.assert_close(finished[EPOCHS - 1]["model"][key], value, msg=key)
