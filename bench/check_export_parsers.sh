#!/usr/bin/env bash
# Parse autotune's vLLM and SGLang exports with vLLM's and SGLang's own argument parsers.
#
#   bash bench/check_export_parsers.sh            # both servers
#   bash bench/check_export_parsers.sh vllm       # one of them
#
# Each server goes into its own virtual environment (never autotune's: each brings its own torch
# and several GB), built once under $AUTOTUNE_PARSER_VENVS (default ~/.cache/autotune/parser-venvs)
# and reused while its pinned version matches. Then tests/test_export_parsers.py parses every
# golden export (tests/golden/export/*/{vllm,sglang}.yaml and the .sh next to it) through them.
#
# Measured on the 2-core CPU development machine (PyPI, cold pip cache):
#   vllm==0.32.0    install 3 min 06 s, 5.8 GB  (CPU torch 2.13 from the local wheel mirror)
#   sglang==0.5.23  install 4 min 52 s, 11 GB   (CUDA torch 2.14; the parser runs without a GPU)
#   the two parses: about 25 s.
set -euo pipefail
cd "$(dirname "$0")/.."

VLLM_VERSION=0.32.0
SGLANG_VERSION=0.5.23
VENVS="${AUTOTUNE_PARSER_VENVS:-$HOME/.cache/autotune/parser-venvs}"
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(vllm sglang)

venv_python() {  # build (or reuse) the venv of $1 at version $2; print its python
    local name=$1 version=$2 dir="$VENVS/$1-$2"
    if ! "$dir/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('$name') != '$version')" 2>/dev/null; then
        rm -rf "$dir"
        # The venv must not see autotune's environment (PYTHONPATH would show pip the repo).
        unset PYTHONPATH
        python3 -m venv "$dir"
        local start=$SECONDS
        "$dir/bin/pip" install --quiet "$name==$version" >&2
        if [ "$name" = vllm ]; then
            # pip pairs vLLM's CPU torch with torchvision/torchaudio/torchcodec builds for another
            # torch; they fail at import ("operator torchvision::nms does not exist"). The argument
            # parser needs none of them, and vLLM imports them only when present.
            "$dir/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec >&2
        fi
        echo "installed $name==$version in $((SECONDS - start)) s, $(du -sh "$dir" | cut -f1)" >&2
    fi
    echo "$dir/bin/python"
}

for target in "${TARGETS[@]}"; do
    case "$target" in
        vllm) export AUTOTUNE_VLLM_PYTHON; AUTOTUNE_VLLM_PYTHON=$(venv_python vllm "$VLLM_VERSION") ;;
        sglang) export AUTOTUNE_SGLANG_PYTHON; AUTOTUNE_SGLANG_PYTHON=$(venv_python sglang "$SGLANG_VERSION") ;;
        *) echo "unknown target $target; allowed: vllm sglang" >&2; exit 2 ;;
    esac
done

python -m pytest tests/test_export_parsers.py -q -rs
