#!/usr/bin/env bash
# Real-time chunking on Meta-World MT10: inference delays 0, 2, 4 env steps x synchronous, naive
# asynchronous and RTC execution (replacement guidance, the default), then the RTC cells again with
# PiGDM guidance; 50 held-out episodes per task (500 per cell). Every cell is saved as it finishes
# into OUT/cells/; a killed run resumes where it stopped. OUT/summary.md has the table.
#
#   scripts/bench/rtc_mt10.sh RUN_DIR [OUT] [extra mode-policy realtime flags, e.g. --threads 2]
#
# RUN_DIR: a trained MT10 run (e.g. from `mode-policy quickstart`) or its model/ folder.
# OUT: default experiments/results/rtc_mt10.
set -euo pipefail
run=${1:?usage: scripts/bench/rtc_mt10.sh RUN_DIR [OUT] [flags]}
out=${2:-experiments/results/rtc_mt10}
shift $(($# < 2 ? $# : 2))
mode-policy realtime "$run" --out "$out" --tasks mt10 --delays 0,2,4 --modes sync,naive,rtc --episodes 50 "$@"
mode-policy realtime "$run" --out "$out" --tasks mt10 --delays 0,2,4 --modes rtc --guidance pigdm --episodes 50 \
  --plot=false "$@"
