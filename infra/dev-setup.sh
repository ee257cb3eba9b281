#!/usr/bin/env bash
# Sets up a development/CI machine for mer from nothing: system libraries, a virtualenv in .venv, the package.
# Idempotent: a second run only checks. Used by the README's commands and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages: FluidSynth renders EMOPIA's MIDI to audio; promtool (Debian's prometheus) checks infra/;
# PostgreSQL's server programs (initdb, pg_ctl under /usr/lib/postgresql/<major>/bin) let the tests start a throwaway
# cluster where no server is running (tests/fixtures_services.py).
need=()
ldconfig -p 2>/dev/null | grep -q libfluidsynth.so.3 || need+=(libfluidsynth3)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null || need+=(postgresql)
# A second General MIDI SoundFont (FluidR3_GM): the test split rendered with another piano timbre.
[ -f /usr/share/sounds/sf2/FluidR3_GM.sf2 ] || need+=(fluid-soundfont-gm)
# A third (MuseScore General Lite): the second piano the two-SoundFont training row learns from.
[ -f /usr/share/sounds/sf3/MuseScore_General_Lite.sf3 ] || need+=(musescore-general-soundfont-small)
if [ ${#need[@]} -gt 0 ]; then
  echo "dev-setup: installing ${need[*]} (Debian packages)"
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Python: torch first and pinned to the CPU wheel (an unpinned torch pulls gigabytes of CUDA packages).
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0 2> >(grep -v "^WARNING: Location" >&2)
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' 2> >(grep -v "^WARNING: Location" >&2)
echo "dev-setup: ready ($(.venv/bin/python -c 'import torch, ray; print("torch", torch.__version__, "ray", ray.__version__)'))"
