#!/usr/bin/env bash
# Install CALVIN's simulator (calvin_env) into the current Python, re-runnably.
#
#   scripts/install/install_calvin.sh [SOURCE] [BUILD_DIR]
#
# SOURCE    a git repository of calvin_env: a URL or a local (bare) clone
#           (default: https://github.com/mees/calvin_env.git)
# BUILD_DIR where the checkout lives; it must stay, the install is editable
#           (default: $HOME/.cache/mode_policy/calvin_env)
#
# Environment: CALVIN_ENV_COMMIT (default: the commit below), WITH_TACTO=1 and TACTO_SOURCE
# (a git repository of lukashermann/tacto) to install tacto for the tactile camera as well.
#
# Why each step (measured on Python 3.11, NumPy 2):
# * calvin_env is not on the package registries. Its HEAD is used, not the older commit
#   mees/calvin pins: there a reset with the LED on leaves the button off.
# * It must be a git checkout: calvin_env.utils.get_git_commit_hash reads it at construction.
# * Its requirements come from the registry (pybullet 3.2.7 has a Python 3.11 wheel), then
#   `pip install -e` without resolving again.
# * tacto is only needed for the tactile camera; its requirements name a git URL, so it is
#   installed --no-deps, and its `np.float` (removed in NumPy 2) is replaced by `float`.
set -euo pipefail

SOURCE="${1:-https://github.com/mees/calvin_env.git}"
BUILD_DIR="${2:-$HOME/.cache/mode_policy/calvin_env}"
COMMIT="${CALVIN_ENV_COMMIT:-797142c588c21e76717268b7b430958dbd13bf48}"
TACTO_COMMIT="dd53360d9a8c186f0d6439372ec0be0fa5e21731"
PYTHON="${PYTHON:-python}"

checkout() {  # checkout REPO DIR COMMIT: clone once, then pin the commit
    local repo="$1" dir="$2" commit="$3"
    if [ ! -d "$dir/.git" ]; then
        rm -rf "$dir"
        git clone --quiet "$repo" "$dir"
    fi
    git -C "$dir" -c advice.detachedHead=false checkout --quiet "$commit"
}

mkdir -p "$(dirname "$BUILD_DIR")"
checkout "$SOURCE" "$BUILD_DIR" "$COMMIT"

# calvin_env's requirements.txt, with the simulator pinned to the version measured here.
"$PYTHON" -m pip install --quiet "pybullet==3.2.7" cloudpickle gitpython gym hydra-core hydra-colorlog \
    matplotlib numba numpy numpy-quaternion omegaconf opencv-python pandas scipy
"$PYTHON" -m pip install --quiet --no-deps -e "$BUILD_DIR"

if [ "${WITH_TACTO:-0}" = "1" ]; then
    TACTO_DIR="$BUILD_DIR/tacto"
    checkout "${TACTO_SOURCE:-https://github.com/lukashermann/tacto.git}" "$TACTO_DIR" "$TACTO_COMMIT"
    grep -rl 'np\.float\b' "$TACTO_DIR/tacto" | xargs -r sed -i 's/np\.float\b/float/g'
    # urdfpy pins networkx==2.2, which no longer imports on Python 3.10+: its other needs from the
    # registry, then urdfpy itself without resolving.
    "$PYTHON" -m pip install --quiet pyrender trimesh lxml pycollada six "networkx>=3"
    "$PYTHON" -m pip install --quiet --no-deps urdfpy
    URDFPY="$("$PYTHON" -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("urdfpy").origin))')"
    grep -rl 'np\.float\b' "$URDFPY" | xargs -r sed -i 's/np\.float\b/float/g'
    "$PYTHON" -m pip install --quiet --no-deps -e "$TACTO_DIR"
fi

"$PYTHON" -c 'import calvin_env, pybullet; from calvin_env.envs.play_table_env import PlayTableSimEnv; print("calvin_env", calvin_env.__file__)'
