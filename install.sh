#!/usr/bin/env bash
# Install thyme into ./.venv: the package, its dependencies, and a llama.cpp build for this machine.
#
#   ./install.sh            pick the llama.cpp build automatically (CUDA if nvcc, Metal on macOS, else CPU)
#   ./install.sh --cpu      force the CPU build
#   ./install.sh --cuda     force the CUDA build
#   ./install.sh --dev      also install the test and lint tools
#
# Idempotent (run it again to update) and needs no root.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

backend=auto
dev=0
quiet=0
for arg in "$@"; do
    case "$arg" in
        --cpu) backend=cpu ;;
        --cuda) backend=cuda ;;
        --metal) backend=metal ;;
        --dev) dev=1 ;;
        --quiet|-q) quiet=1 ;;
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown option '$arg' (see ./install.sh --help)" >&2; exit 2 ;;
    esac
done

say() { echo "==> $*"; }
pipq() { if [ "$quiet" = 1 ]; then "$venv/bin/python" -m pip -q "$@"; else "$venv/bin/python" -m pip "$@"; fi; }

python="${PYTHON:-}"
if [ -z "$python" ]; then
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
            python="$candidate"; break
        fi
    done
fi
if [ -z "$python" ]; then
    echo "install.sh: thyme needs Python 3.11 or newer; none found (set PYTHON=/path/to/python3.11)" >&2
    exit 1
fi

if [ "$backend" = auto ]; then
    if [ "$(uname -s)" = Darwin ]; then backend=metal
    elif command -v nvcc >/dev/null 2>&1; then
        # nvcc alone is not enough: CUDA toolkits are often installed on machines without a GPU,
        # and a CUDA build takes far longer. Build for CUDA when a GPU is visible too.
        if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; then
            backend=cuda
        else
            say "nvcc found but no NVIDIA GPU is visible: building for the CPU (./install.sh --cuda forces CUDA)"
            backend=cpu
        fi
    else backend=cpu
    fi
fi
case "$backend" in
    cuda)
        cmake_args="-DGGML_CUDA=on"
        # Only this machine's GPU architecture: a much shorter build than all of them.
        if nvidia-smi -L 2>/dev/null | grep -q GPU; then cmake_args="$cmake_args -DCMAKE_CUDA_ARCHITECTURES=native"; fi
        ;;
    metal) cmake_args="-DGGML_METAL=on" ;;
    *) cmake_args="" ;;
esac

venv="$here/.venv"
if [ -x "$venv/bin/python" ]; then
    say "using the existing virtual environment $venv"
else
    say "creating a virtual environment in $venv with $("$python" --version)"
    "$python" -m venv "$venv"
fi
pipq install --upgrade pip >/dev/null

# llama-cpp-python ships only as source: pip compiles llama.cpp (about 8 minutes on 2 cores, once;
# pip caches the wheel). A build for another backend is a different wheel, hence the marker file.
marker="$venv/.thyme-llama-backend"
if "$venv/bin/python" -c 'import llama_cpp' 2>/dev/null && [ "$(cat "$marker" 2>/dev/null)" = "$backend" ]; then
    say "llama-cpp-python already built for $backend"
else
    say "building llama-cpp-python for $backend (CMAKE_ARGS=$cmake_args); the first build takes several minutes"
    extra=()
    # pip's wheel cache is keyed by the source, not by CMAKE_ARGS: only CPU builds may come from it.
    if [ "$backend" != cpu ]; then extra+=(--no-cache-dir); fi
    if [ -f "$marker" ] && [ "$(cat "$marker")" != "$backend" ]; then extra+=(--force-reinstall --no-deps --no-cache-dir); fi
    if [ ! -f "$marker" ] && "$venv/bin/python" -c 'import llama_cpp' 2>/dev/null && [ "$backend" != cpu ]; then
        extra+=(--force-reinstall --no-deps)
    fi
    CMAKE_ARGS="$cmake_args" pipq install ${extra[@]+"${extra[@]}"} "llama-cpp-python==0.3.36"
    echo "$backend" > "$marker"
fi

target="."
if [ "$dev" = 1 ]; then target=".[dev]"; fi
if [ "$dev" = 1 ]; then say "installing thyme, its dependencies and the test tools"; else say "installing thyme and its dependencies"; fi
pipq install -e "$target"

say "installed: $("$venv/bin/thyme" --version) with llama.cpp built for $backend"
if [ "$dev" = 1 ]; then
    echo "next: .venv/bin/python -m pytest"
else
    echo "next: .venv/bin/thyme doctor    then: .venv/bin/thyme ask photo.jpg \"read the serial number\""
fi
