#!/usr/bin/env bash
# Test mode-policy against LeRobot 0.6.1 itself (Python 3.12, LeRobot's own torch).
#
#   scripts/checks/check_lerobot.sh [WORK_DIR]
#
# 1. installs Debian's FFmpeg 5 libraries for torchcodec (when run as root and missing);
# 2. builds (or reuses) a Python 3.12 venv at $MODE_LEROBOT_VENV (default /tmp/mode-lerobot-venv)
#    with lerobot[dataset,training]==0.6.1, shows that `pip install --dry-run -e .` of mode-policy
#    changes neither torch nor metaworld, then installs mode-policy and the plugin;
# 3. writes two datasets with `mode-policy demos` (state only; state + a 64 px camera) using the
#    mode-policy of this checkout in $MODE_PYTHON (default: python, the one with metaworld);
# 4. reads them with LeRobot's LeRobotDataset and compares every value with our DatasetReader,
#    compares stats, appends an episode with LeRobot's resume/add_frame/save_episode and reloads it
#    in both (plugins/lerobot_policy_mode/checks/check_datasets.py);
# 5. runs lerobot-train --policy.type=mode for a few steps on each dataset, loads the checkpoint with
#    make_policy, calls select_action, converts it for MoDEPolicy.from_pretrained and compares
#    (plugins/lerobot_policy_mode/checks/check_training.py);
# 6. trains with `mode-policy train` on each dataset (state: tiny preset, minilm goals; camera:
#    cpu-image preset, learned task goals), converts the run with
#    `python -m lerobot_policy_mode.convert`, loads it with LeRobot's make_policy and processors and
#    compares tensors, action chunk and select_action with MoDEPolicy.from_pretrained
#    (plugins/lerobot_policy_mode/checks/check_import.py).
# Exits non-zero on any mismatch. Needs the package registries (first run) but no other network.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
WORK="${1:-/tmp/mode-lerobot-test}"
VENV="${MODE_LEROBOT_VENV:-/tmp/mode-lerobot-venv}"
MODE_PYTHON="${MODE_PYTHON:-python}"
LEROBOT_SPEC="lerobot[dataset,training]==0.6.1"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" HF_HUB_OFFLINE=1 SVT_LOG=1 MUJOCO_GL="${MUJOCO_GL:-egl}"
START=$(date +%s)
step() { echo; echo "== $* ($(( $(date +%s) - START )) s)"; }

step "FFmpeg 5 libraries for torchcodec"
if ! ldconfig -p | grep -q "libavcodec.so.59"; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    apt-get install -y -qq libavutil57 libavcodec59 libavformat59 libavdevice59 libavfilter8 libswscale6 libswresample4
  else
    echo "libavcodec.so.59 missing and not root: LeRobot falls back to pyav for decoding"
  fi
fi

step "Python 3.12 venv with $LEROBOT_SPEC at $VENV"
PY312="$(command -v python3.12 || true)"
if [ -z "$PY312" ] && command -v pyenv >/dev/null; then PY312="$(pyenv prefix 3.12 2>/dev/null)/bin/python3.12"; fi
[ -x "$PY312" ] || { echo "python3.12 not found (pyenv install 3.12)"; exit 2; }
[ -x "$VENV/bin/python" ] || "$PY312" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q "$LEROBOT_SPEC"
versions() { "$VENV/bin/python" -c "import importlib.metadata as m
for d in ('lerobot', 'torch', 'metaworld'):
    try: print(d, m.version(d))
    except m.PackageNotFoundError: print(d, 'not installed')"; }
BEFORE="$(versions)"; echo "$BEFORE"

step "pip install --dry-run -e . (mode-policy into the LeRobot venv)"
"${PIP[@]}" install --dry-run -e "$REPO" > "$WORK.dryrun.txt" 2>&1 || { cat "$WORK.dryrun.txt"; exit 1; }
WOULD="$(grep '^Would install' "$WORK.dryrun.txt" || echo 'Would install: nothing')"
echo "$WOULD"
if echo "$WOULD" | grep -Eiq '(^| )(torch|metaworld)-[0-9]'; then echo "FAIL: would change torch or metaworld"; exit 1; fi
echo "torch/metaworld: unchanged by the dry run"

step "install mode-policy and the plugin"
"${PIP[@]}" install -q -e "$REPO"
"${PIP[@]}" install -q -e "$REPO/plugins/lerobot_policy_mode"
AFTER="$(versions)"; echo "$AFTER"
[ "$BEFORE" = "$AFTER" ] || { echo "FAIL: installing changed versions"; exit 1; }

step "datasets written by mode-policy demos"
rm -rf "$WORK"; mkdir -p "$WORK"
"$MODE_PYTHON" -m mode_policy.cli.main demos --tasks reach-v3,button-press-topdown-v3 --episodes 2 \
  --out "$WORK/state" --workers 1 > "$WORK/demos_state.log" 2>&1
"$MODE_PYTHON" -m mode_policy.cli.main demos --tasks reach-v3 --episodes 2 --cameras corner --image_size 64 \
  --out "$WORK/cam" --workers 1 > "$WORK/demos_cam.log" 2>&1

step "LeRobotDataset vs DatasetReader, stats, append with LeRobot"
"$VENV/bin/python" "$REPO/plugins/lerobot_policy_mode/checks/check_datasets.py" "$WORK" "$WORK/state" "$WORK/cam" \
  2> "$WORK/check_datasets.err" | tee "$WORK/check_datasets.json" || { grep -v '^Svt' "$WORK/check_datasets.err" | tail -20; exit 1; }

for name in state cam; do
  step "lerobot-train --policy.type=mode on $name, then load it, select_action, MoDEPolicy.from_pretrained"
  "$VENV/bin/lerobot-train" --dataset.repo_id="local/$name" --dataset.root="$WORK/$name" \
    --policy.type=mode --policy.preset=tiny --policy.device=cpu --policy.push_to_hub=false \
    --steps=4 --batch_size=4 --num_workers=0 --save_freq=4 --log_freq=2 --wandb.enable=false \
    --output_dir="$WORK/train_$name" > "$WORK/train_$name.log" 2>&1 || { tail -30 "$WORK/train_$name.log"; exit 1; }
  grep -E "step:4 " "$WORK/train_$name.log" | sed 's/.*step:4/step:4/'
  "$VENV/bin/python" "$REPO/plugins/lerobot_policy_mode/checks/check_training.py" \
    "$WORK/train_$name/checkpoints/last/pretrained_model" "$WORK/$name" "$WORK/train_$name" 2> "$WORK/check_$name.err" \
    || { tail -20 "$WORK/check_$name.err"; exit 1; }
done

for name in state cam; do
  step "mode-policy train on $name, convert for LeRobot, make_policy vs MoDEPolicy.from_pretrained"
  if [ "$name" = state ]; then ARGS=(--preset tiny); else ARGS=(--preset cpu-image --language task); fi
  "$MODE_PYTHON" -m mode_policy.cli.main train --dataset "$WORK/$name" "${ARGS[@]}" --steps 4 --batch_size 4 \
    --log_every 2 --checkpoint_every 4 --device cpu --progress false --output_dir "$WORK/ours_$name" \
    > "$WORK/ours_$name.log" 2>&1 || { tail -30 "$WORK/ours_$name.log"; exit 1; }
  "$VENV/bin/python" -m lerobot_policy_mode.convert "$WORK/ours_$name" "$WORK/ours_${name}_lerobot" \
    2> "$WORK/convert_$name.err" || { tail -20 "$WORK/convert_$name.err"; exit 1; }
  "$VENV/bin/python" "$REPO/plugins/lerobot_policy_mode/checks/check_import.py" \
    "$WORK/ours_${name}_lerobot" "$WORK/ours_$name/model" "$WORK/$name" 2> "$WORK/check_import_$name.err" \
    | tail -1 || { tail -20 "$WORK/check_import_$name.err"; exit 1; }
done

step "PASSED in $(( $(date +%s) - START )) s"
