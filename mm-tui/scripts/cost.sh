#!/bin/bash
# The dashboard's own CPU use: runs the release mm-tui in a tmux window
# for SECONDS (default 60) with ARGS, then prints the CPU time of its main
# thread (all of the dashboard's own work) and of the whole process, as a
# share of one core. Run as root for the host side.
#   cargo build --release -p mm-tui && sudo mm-tui/scripts/cost.sh 60
#   sudo mm-tui/scripts/cost.sh 60 --pid 1    # no engine: the whole process is the dashboard
set -eu
secs=${1:-60}
shift || true
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=$root/target/release/mm-tui
[ -x "$bin" ] || { echo "build it first: cargo build --release -p mm-tui" >&2; exit 2; }
command -v tmux >/dev/null || { echo "needs tmux" >&2; exit 2; }
sock=mm-tui-cost-$$
tmux -L "$sock" -f /dev/null new-session -d -s c -x 100 -y 32 "exec $bin $*"
trap 'tmux -L "$sock" kill-server 2>/dev/null || true' EXIT
sleep 8
pid=$(tmux -L "$sock" list-panes -t c -F '#{pane_pid}')
tck=$(getconf CLK_TCK)
ticks() { awk '{print $14+$15}' "$1"; }
m0=$(ticks /proc/$pid/task/$pid/stat); a0=$(ticks /proc/$pid/stat); t0=$(date +%s.%N)
sleep "$secs"
m1=$(ticks /proc/$pid/task/$pid/stat); a1=$(ticks /proc/$pid/stat); t1=$(date +%s.%N)
awk -v m="$((m1 - m0))" -v a="$((a1 - a0))" -v t0="$t0" -v t1="$t1" -v hz="$tck" -v args="$*" 'BEGIN {
  w = t1 - t0
  printf "mm-tui %s over %.0f s:\n  main thread   %.2f%% of one core\n  whole process %.2f%% of one core\n", args, w, m / hz / w * 100, a / hz / w * 100
}'
tmux -L "$sock" capture-pane -p -t c | head -1
tmux -L "$sock" send-keys -t c q
sleep 1
