#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment. Idempotent: a second run with
# unchanged inputs returns in about a second.
#
# Why the mmcv step exists: mmsegmentation 1.2 imports mmcv.ops, which needs mmcv 2.1.x
# built with its C++ ops. PyPI carries only mmcv's source, and as published it asks the
# compiler for C++17 while torch 2.14's headers need C++20. We build the wheel once with
# the standard raised and keep it in $GANAUG_CACHE (default ~/.cache/ganaug), outside the
# checkout, so later environments install it in seconds. The cold build takes about 17
# minutes on 2 cores.
#
# Settings (environment variables):
#   GANAUG_VENV               where the venv goes (default: <repo>/.venv)
#   GANAUG_CACHE              wheel cache (default: ~/.cache/ganaug)
#   GANAUG_TORCH_SPEC         torch requirement(s) (default: torch==2.14.1 torchvision==0.29.1)
#   GANAUG_DETECTRON2_WHEEL   optional path to a detectron2 wheel you built yourself
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${GANAUG_VENV:-$repo/.venv}"
cache="${GANAUG_CACHE:-$HOME/.cache/ganaug}"
torch_spec="${GANAUG_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
mmcv_version="2.1.0"
py="$venv/bin/python"
pip=("$py" -m pip --disable-pip-version-check -q)

stamp_src="$(cat "$repo/pyproject.toml" "$repo/tools/setup_env.sh"; echo "$torch_spec" \
  "${GANAUG_DETECTRON2_WHEEL:-}")"
stamp="$(printf '%s' "$stamp_src" | sha256sum | cut -c1-16)"
if [[ -f "$venv/.ganaug-stamp" && "$(cat "$venv/.ganaug-stamp")" == "$stamp" ]]; then
  exit 0
fi

log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

if [[ -x "$py" ]] && ! "$py" -m pip --version >/dev/null 2>&1; then
  # An interrupted earlier run can leave a venv without pip: start it again.
  if [[ -f "$venv/pyvenv.cfg" ]]; then
    log "removing incomplete virtual environment at $venv"
    rm -rf "$venv"
  fi
fi
if [[ ! -x "$py" ]]; then
  log "creating virtual environment at $venv"
  python3 -m venv "$venv"
fi

log "installing torch ($torch_spec)"
# shellcheck disable=SC2086
"${pip[@]}" install $torch_spec
# mmcv's setup.py imports pkg_resources, which setuptools 81 removed; torch needs >=77.0.3.
"${pip[@]}" install "setuptools>=77.0.3,<81" wheel ninja

mkdir -p "$cache/wheels"
wheel="$(ls "$cache"/wheels/mmcv-"$mmcv_version"-*.whl 2>/dev/null | head -n 1 || true)"
if [[ -z "$wheel" ]]; then
  log "building mmcv $mmcv_version with ops (once; about 17 minutes on 2 cores)"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  "${pip[@]}" download --no-deps --no-binary :all: --no-build-isolation \
    -d "$tmp" "mmcv==$mmcv_version"
  tar -xzf "$tmp/mmcv-$mmcv_version.tar.gz" -C "$tmp"
  src="$tmp/mmcv-$mmcv_version"
  # torch >= 2.10 headers use C++20 features; mmcv 2.1 hard-codes -std=c++17.
  sed -i 's/-std=c++17/-std=c++20/g' "$src/setup.py"
  (cd "$src" && MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    "${pip[@]}" wheel --no-build-isolation --no-deps -w "$tmp/out" .)
  built="$(ls "$tmp"/out/mmcv-*.whl)"
  # Copy then rename, so an interrupted build never leaves a half-written wheel in the cache.
  cp "$built" "$cache/wheels/.partial.whl"
  mv "$cache/wheels/.partial.whl" "$cache/wheels/$(basename "$built")"
  wheel="$cache/wheels/$(basename "$built")"
fi
log "installing $(basename "$wheel")"
"${pip[@]}" install --no-deps "$wheel"

if [[ -n "${GANAUG_DETECTRON2_WHEEL:-}" ]]; then
  log "installing detectron2 from $GANAUG_DETECTRON2_WHEEL"
  "${pip[@]}" install "$GANAUG_DETECTRON2_WHEEL"
fi

# Fashion-MNIST (classification module) comes from Debian's package, not a download.
if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
  if command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]]; then
    log "installing Debian package dataset-fashion-mnist"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      dataset-fashion-mnist >/dev/null
  else
    log "note: Fashion-MNIST needs 'apt-get install dataset-fashion-mnist' (run as root)"
  fi
fi

log "installing ganaug with extras mmseg, timm, inspect, dev"
"${pip[@]}" install --no-build-isolation -e "$repo[mmseg,timm,inspect,dev]"
"$py" -c "import mmcv.ops, mmseg, timm, ganaug" >/dev/null
echo "$stamp" > "$venv/.ganaug-stamp"
log "environment ready: $venv"
