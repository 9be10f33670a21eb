#!/usr/bin/env bash
# The LeRobot test command: mode-policy inside LeRobot 0.6.1 (Python 3.12, LeRobot's own torch), installed
# and used as a LeRobot user does. The project's second test command (too long for CI; see the wall time
# in docs/guides/lerobot-plugin.md).
#
#   scripts/checks/check_lerobot.sh [WORK_DIR]        (default WORK_DIR: /tmp/mode-lerobot-test)
#
# MODE_LEROBOT_VENV  the venv to build or reuse (default /tmp/mode-lerobot-venv)
# MODE_PYTHON312     a Python 3.12 to build it with (default: a python3.12 on PATH that runs, else pyenv's 3.12)
#
#  1. FFmpeg 5 libraries for torchcodec (apt-get, when root and missing);
#  2. the README's install commands, `pip check` after each: lerobot[dataset,training]==0.6.1, then
#     mode-policy and the plugin (with lerobot[metaworld,async]) in one resolve under LeRobot's pins:
#     torch and huggingface-hub stay where LeRobot put them, metaworld is lerobot[metaworld]'s; a dry run
#     of LeRobot's extras afterwards moves nothing; the other order (plugin first) resolves to the same set;
#  3. datasets: `mode-policy demos` (state; state of another task; state + 64 px camera) and LeRobot's
#     own Meta-World env (lerobot_policy_mode.metaworld_data); LeRobotDataset vs our reader;
#  4. lerobot-train --policy.type=mode (state; camera with a learned task embedding), the checkpoints
#     self-describing, copied without mode_config.json, with load-time overrides and refusals;
#  5. fine-tuning with --policy.path on another dataset (its normalisation, frozen routers);
#  6. --resume=true from a checkpoint (trained weights, EMA, schedule);
#  7. lerobot-eval --env.type=metaworld, and a refused network override on its command line;
#  8. LeRobot's async-inference server serving mode (a gRPC round trip); LeRobot's RTC contract;
#  9. mode-policy train -> python -m lerobot_policy_mode.convert -> LeRobot (learned task vocabulary);
# 10. both command lines on the same data: same MoDEConfig, learning rates and weight-decay groups.
# Any failure stops the script with the failing command's output on screen. Needs the package registries.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
WORK="${1:-/tmp/mode-lerobot-test}"
VENV="${MODE_LEROBOT_VENV:-/tmp/mode-lerobot-venv}"
LEROBOT="lerobot[dataset,training]==0.6.1"
PLUGIN="$REPO/plugins/lerobot_policy_mode"
CHECKS="$PLUGIN/checks"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" HF_HUB_OFFLINE=1 SVT_LOG=1 MUJOCO_GL="${MUJOCO_GL:-egl}"
START=$(date +%s)
rm -rf "$WORK"
mkdir -p "$WORK"

step() { echo; echo "== $* ($(($(date +%s) - START)) s)"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
# run NAME CMD...: CMD's output goes to $WORK/NAME.log; on failure its last lines are shown and the script stops
run() {
  local name="$1"; shift
  if ! "$@" > "$WORK/$name.log" 2>&1; then
    echo "---- last lines of $WORK/$name.log" >&2
    grep -v '^Svt\|^Loading weights' "$WORK/$name.log" | tail -40 >&2
    fail "$name: $*"
  fi
}
trap 'echo "FAIL: line $LINENO: $BASH_COMMAND (exit $?)" >&2' ERR

step "FFmpeg 5 libraries for torchcodec"
if ! ldconfig -p | grep -q "libavcodec.so.59"; then
  if [ "$(id -u)" = 0 ]; then
    LIBS=(libavutil57 libavcodec59 libavformat59 libavdevice59 libavfilter8 libswscale6 libswresample4)
    apt-get install -y -qq "${LIBS[@]}" > "$WORK/apt.log" 2>&1 || { run apt_update apt-get update -qq && run apt apt-get install -y -qq "${LIBS[@]}"; }
  else
    echo "libavcodec.so.59 missing and not root: LeRobot decodes with pyav instead of torchcodec"
  fi
fi

step "Python 3.12"
find_python312() {
  local root="${PYENV_ROOT:-$HOME/.pyenv}" c p
  for c in "${MODE_PYTHON312:-}" python3.12 "$root"/versions/3.12*/bin/python3.12; do
    [ -n "$c" ] || continue
    p="$(command -v "$c" 2>/dev/null || true)"
    [ -n "$p" ] || continue
    # a pyenv shim exists on PATH even when no 3.12 is selected: run it to be sure
    if "$p" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then echo "$p"; return 0; fi
  done
  return 1
}
PY312="$(find_python312)" || fail "no Python 3.12 found (tried \$MODE_PYTHON312, python3.12, pyenv's versions/3.12*): pyenv install 3.12"
echo "$PY312 ($("$PY312" --version))"

step "the README's install commands, pip check after each ($VENV)"
[ -x "$VENV/bin/python" ] || run venv "$PY312" -m venv "$VENV"
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)
pip_check() { "${PIP[@]}" check > "$WORK/pip_check_$1.log" 2>&1 || { cat "$WORK/pip_check_$1.log" >&2; fail "pip check after $1"; }; echo "pip check after $1: $(cat "$WORK/pip_check_$1.log")"; }
versions() { "$PY" -c "import importlib.metadata as m
for d in ('torch', 'huggingface-hub', 'transformers', 'metaworld', 'mujoco', 'lerobot'):
    try: print(f'{d}=={m.version(d)}')
    except m.PackageNotFoundError: print(f'{d}=-')"; }
run install_lerobot "${PIP[@]}" install "$LEROBOT"
pip_check lerobot
LEROBOT_VERSIONS="$(versions)"; echo "$LEROBOT_VERSIONS" | tr '\n' ' '; echo
run install_mode "${PIP[@]}" install -e "$REPO" -e "$PLUGIN[metaworld,async]"
pip_check mode_policy_and_plugin
MODE_VERSIONS="$(versions)"; echo "$MODE_VERSIONS" | tr '\n' ' '; echo
for d in torch huggingface-hub lerobot; do
  [ "$(echo "$LEROBOT_VERSIONS" | grep "^$d==")" = "$(echo "$MODE_VERSIONS" | grep "^$d==")" ] || fail "installing mode-policy moved $d"
done
echo "$MODE_VERSIONS" | grep -q "^metaworld==3.0.0$" || fail "metaworld is not lerobot[metaworld]'s 3.0.0"
run dry_lerobot_extras "${PIP[@]}" install --dry-run "lerobot[dataset,training,metaworld,async,transformers-dep]==0.6.1"
if grep '^Would install' "$WORK/dry_lerobot_extras.log" | grep -Eiq '(^| )(torch|huggingface[-_]hub|transformers|metaworld|mujoco)-[0-9]'; then
  grep '^Would install' "$WORK/dry_lerobot_extras.log"; fail "LeRobot's extras would move a pinned package"
fi
echo "LeRobot's extras after the plugin: $(grep '^Would install' "$WORK/dry_lerobot_extras.log" || echo 'nothing to install')"
# the other order: mode-policy and the plugin first (they bring LeRobot) resolve to the same versions
run venv_empty "$PY312" -m venv "$WORK/empty-venv"
run dry_plugin_first "$WORK/empty-venv/bin/python" -m pip --disable-pip-version-check install --dry-run --quiet \
  --report "$WORK/plugin_first.json" -e "$REPO" -e "$PLUGIN[metaworld,async]"
"$PY" - "$WORK/plugin_first.json" <<'EOF' || fail "the plugin-first install resolves other versions"
import importlib.metadata as m, json, sys
name = lambda n: n.lower().replace("_", "-")
chosen = {name(i["metadata"]["name"]): i["metadata"]["version"] for i in json.load(open(sys.argv[1]))["install"]}
for d in ("torch", "huggingface-hub", "transformers", "metaworld", "mujoco", "lerobot"):
    have = m.version(d)
    print(f"plugin first: {d}=={chosen.get(d)} (installed: {have})")
    assert chosen.get(d) == have, d
EOF

step "datasets: mode-policy demos (state, another task, camera) and LeRobot's Meta-World env"
run demos_state "$VENV/bin/mode-policy" demos --tasks reach-v3,button-press-topdown-v3 --episodes 2 --out "$WORK/state" --workers 1
run demos_state2 "$VENV/bin/mode-policy" demos --tasks drawer-close-v3 --episodes 2 --out "$WORK/state2" --workers 1
run demos_cam "$VENV/bin/mode-policy" demos --tasks reach-v3 --episodes 2 --cameras corner --image_size 64 --out "$WORK/cam" --workers 1
run demos_mw "$PY" -m lerobot_policy_mode.metaworld_data --tasks button-press-topdown-v3 --episodes 1 --image_size 64 --out "$WORK/mw"
tail -1 "$WORK/demos_mw.log"
run check_datasets "$PY" "$CHECKS/check_datasets.py" "$WORK" "$WORK/state" "$WORK/cam"
grep -v '^Svt' "$WORK/check_datasets.log" | cut -c1-300

COMMON=(--policy.device=cpu --policy.push_to_hub=false --num_workers=0 --log_freq=2 --wandb.enable=false --batch_size=4)
train() {  # train NAME DATASET STEPS ARGS...
  local name="$1" data="$2" steps="$3"; shift 3
  run "train_$name" "$VENV/bin/lerobot-train" --dataset.repo_id="local/$(basename "$data")" --dataset.root="$data" \
    --steps="$steps" --save_freq=4 "${COMMON[@]}" --output_dir="$WORK/train_$name" "$@"
  grep -E "step:$steps " "$WORK/train_$name.log" | sed "s/.*step:$steps/$name step:$steps/"
}
ckpt() { echo "$WORK/train_$1/checkpoints/${2:-last}/pretrained_model"; }

step "lerobot-train --policy.type=mode: state (tiny), camera (cpu-image, learned task embedding)"
train state "$WORK/state" 8 --policy.type=mode --policy.preset=tiny
train cam "$WORK/cam" 4 --policy.type=mode --policy.preset=cpu-image --policy.language_encoder=task
for name in state cam; do
  run "check_training_$name" "$PY" "$CHECKS/check_training.py" "$(ckpt "$name")" "$WORK/$name" "$WORK/check_$name"
  tail -1 "$WORK/check_training_$name.log" | cut -c1-400
done

step "fine-tune: lerobot-train --policy.path on another task's data"
run train_finetune "$VENV/bin/lerobot-train" --dataset.repo_id=local/state2 --dataset.root="$WORK/state2" \
  --policy.path="$(ckpt state)" --steps=4 --save_freq=4 "${COMMON[@]}" --output_dir="$WORK/train_finetune"
run check_finetune "$PY" "$CHECKS/check_finetune.py" "$(ckpt state)" "$(ckpt finetune)" "$WORK/state2"
tail -1 "$WORK/check_finetune.log"

step "resume: --resume=true from step 4 to 8"
cp -r "$WORK/train_state" "$WORK/train_resumed"
run train_resumed "$VENV/bin/lerobot-train" --config_path="$(ckpt resumed 000004)/train_config.json" --resume=true \
  --output_dir="$WORK/train_resumed" --steps=8
run check_resume "$PY" "$CHECKS/check_resume.py" "$(ckpt resumed 000004)" "$WORK/state" "$WORK/train_resumed.log" "$WORK/train_state.log"
tail -1 "$WORK/check_resume.log"

step "lerobot-eval --env.type=metaworld (LeRobot's env, 1 episode of up to 500 steps)"
train mw "$WORK/mw" 4 --policy.type=mode --policy.preset=cpu-image
EVAL=("$VENV/bin/lerobot-eval" --policy.path="$(ckpt mw)" --policy.device=cpu --env.type=metaworld
  --env.task=button-press-topdown-v3 --eval.n_episodes=1 --eval.batch_size=1
  --rename_map='{"observation.image": "observation.images.top"}')
if "${EVAL[@]}" --policy.d_model=32 --output_dir="$WORK/eval_refused" > "$WORK/eval_refused.log" 2>&1; then
  fail "lerobot-eval accepted --policy.d_model=32 on a d_model=128 checkpoint"
fi
grep -o "these settings would change it: d_model=32 (checkpoint: 128)" "$WORK/eval_refused.log" || { tail -20 "$WORK/eval_refused.log"; fail "no clear refusal"; }
run eval_mw "${EVAL[@]}" --policy.num_inference_steps=5 --output_dir="$WORK/eval_mw"
"$PY" -c "import json,sys; i = json.load(open(sys.argv[1]))['overall']; print('lerobot-eval metaworld:', {k: i[k] for k in ('n_episodes', 'pc_success', 'avg_sum_reward', 'eval_s')})
assert i['n_episodes'] == 1" "$WORK/eval_mw/eval_info.json"

step "LeRobot's async-inference server serving mode; LeRobot's RTC contract"
run check_async "$PY" "$CHECKS/check_async.py" "$(ckpt mw)" "$WORK/mw"
tail -1 "$WORK/check_async.log"
run check_rtc "$PY" "$CHECKS/check_rtc.py" "$(ckpt state)" "$WORK/state"
tail -1 "$WORK/check_rtc.log"

for name in state cam; do
  step "mode-policy train on $name -> python -m lerobot_policy_mode.convert -> LeRobot, from config.json alone"
  if [ "$name" = state ]; then ARGS=(--preset tiny); else ARGS=(--preset cpu-image --language task); fi
  run "ours_$name" "$VENV/bin/mode-policy" train --dataset "$WORK/$name" "${ARGS[@]}" --steps 4 --batch_size 4 \
    --log_every 2 --checkpoint_every 4 --device cpu --progress false --output_dir "$WORK/ours_$name"
  run "convert_$name" "$PY" -m lerobot_policy_mode.convert "$WORK/ours_$name" "$WORK/ours_${name}_lerobot"
  run "check_import_$name" "$PY" "$CHECKS/check_import.py" "$WORK/ours_${name}_lerobot" "$WORK/ours_$name/model" "$WORK/$name"
  tail -1 "$WORK/check_import_$name.log"
  # the same preset and data gave the same model in both command lines (cameras and task vocabulary included)
  "$PY" -c "import json, sys; a, b = (json.load(open(p)) for p in sys.argv[1:]); d = sorted(k for k in a if a[k] != b.get(k))
print('lerobot-train vs mode-policy train MoDEConfig differences:', d or 'none'); sys.exit(1 if d else 0)" \
    "$(ckpt "$name")/mode_config.json" "$WORK/ours_$name/model/config.json" || fail "one preset, two models ($name)"
done

step "one recipe: both command lines with a state-only preset on the camera dataset (tiny, 60 steps)"
run recipes "$PY" "$CHECKS/compare_recipes.py" "$WORK/cam" "$WORK/recipes" --preset tiny --steps 60 --batch_size 16 --warmup 20 --window 20
tail -1 "$WORK/recipes.log" | cut -c1-300

trap - ERR
step "PASSED in $(($(date +%s) - START)) s"
