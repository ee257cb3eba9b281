#!/usr/bin/env bash
# Installs mer and its system libraries on one Ray node. Used by the AWS launcher's setup commands
# (cluster/aws.yaml) and by the KubeRay image build (cluster/docker/Dockerfile), so both install the same way.
#
# Usage: setup-node.sh cpu|gpu [REPO_DIR]
#   cpu  torch's CPU wheel (a CPU node never needs the gigabytes of CUDA libraries)
#   gpu  torch's CUDA wheel; PyPI's Linux x86_64 torch *is* the CUDA build, so plain PyPI is the default index.
#        Set TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cu128) to pick another CUDA version.
# Idempotent: a second run finds everything installed and only checks.
set -euo pipefail

# Keep in step with pyproject.toml (tests/test_ops_configs.py checks they agree).
TORCH_VERSION=2.13.0

variant=${1:?usage: setup-node.sh cpu|gpu [REPO_DIR]}
repo=${2:-"$(cd "$(dirname "$0")/.." && pwd)"}
case "$variant" in
  cpu) torch_index=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu} ;;
  gpu) torch_index=${TORCH_INDEX_URL:-https://pypi.org/simple} ;;
  *) echo "setup-node: variant must be cpu or gpu, got '$variant'" >&2; exit 2 ;;
esac

# mer supports Python 3.11 only (pyproject.toml); the rayproject/ray:*-py311-* images carry it.
python -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' \
  || { echo "setup-node: Python 3.11 required, found $(python -V 2>&1)" >&2; exit 1; }

# FluidSynth renders MIDI to audio for the harmony and tone-colour branches.
if ! ldconfig -p 2>/dev/null | grep -q libfluidsynth.so.3; then
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends libfluidsynth3 >/dev/null
fi

# torch before mer, pinned and from the chosen index: mer's own `torch==` requirement is then already met and
# pip does not fetch a different build.
python -m pip install -q --disable-pip-version-check "torch==${TORCH_VERSION}" --index-url "$torch_index"
if [ "$variant" = gpu ]; then
  # A CPU wheel left in the image would satisfy `torch==2.13.0` too (local version +cpu); refuse it.
  python -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)' \
    || { echo "setup-node: torch on a GPU node is a CPU build; reinstall with --force-reinstall" >&2; exit 1; }
fi
python -m pip install -q --disable-pip-version-check "$repo"
python -c 'import mer, torch, ray; print("setup-node: mer ready; torch", torch.__version__, "ray", ray.__version__)'
