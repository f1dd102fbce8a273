#!/usr/bin/env bash
# The whole pytest suite for `make test`. The fault soak (tests/soak) runs on its own dedicated
# real cluster and mostly waits on faults and convergence, so it runs beside the rest instead of
# after it: the wall time of `make test` is the longer of the two, not their sum. Its report is
# printed after the main run; the exit status fails if either fails.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
soak_tmp=$(mktemp -d -t choreo-dp-soak.XXXXXX)
soak_log="$soak_tmp/soak.log"
"$BIN/pytest" -q -p no:cacheprovider --basetemp="$soak_tmp/tmp" tests/soak >"$soak_log" 2>&1 &
soak_pid=$!
# Ctrl-C or a failure of this script must not leave the soak (and its cluster) behind.
trap 'kill -TERM "$soak_pid" 2>/dev/null; wait "$soak_pid" 2>/dev/null; rm -rf "$soak_tmp"' EXIT
# Two workers (pytest-xdist), each with its own emulator and real cluster: most tests wait on
# controllers, watches and timeouts rather than on the CPU, so two run in about the time of one.
# Files stay whole on one worker, so a module's fixtures (an operator, a cluster) start once.
# CHOREO_DP_TEST_WORKERS=0 runs everything in one process.
workers=${CHOREO_DP_TEST_WORKERS:-2}
xdist=()
if [ "$workers" != "0" ]; then xdist=(-n "$workers" --dist loadfile); fi
"$BIN/pytest" -q --durations=25 --ignore=tests/soak "${xdist[@]}" "$@"
main_rc=$?
wait "$soak_pid"
soak_rc=$?
echo
echo "=== fault soak (tests/soak, ran beside the suite) ==="
cat "$soak_log"
echo "=== suite exit status $main_rc, soak exit status $soak_rc ==="
[ "$main_rc" -eq 0 ] && [ "$soak_rc" -eq 0 ]
