# shellcheck shell=bash
# Shared by kafka.sh and prometheus.sh (sourced; they define log and die).
#
#   terminate LABEL PID TIMEOUT ALIVE_FN
#
# Sends TERM to PID, waits up to TIMEOUT seconds while `ALIVE_FN` (the script's own
# "is my server still running" function) succeeds, then sends KILL and waits 10 s more.
# Dies if the process survives that.
terminate() {
    local label=$1 pid=$2 timeout=$3 alive=$4
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + timeout))
    while "$alive" >/dev/null && ((SECONDS < deadline)); do
        sleep 0.2
    done
    if "$alive" >/dev/null; then
        log "$label (pid $pid) still running after ${timeout}s; sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
        deadline=$((SECONDS + 10))
        while "$alive" >/dev/null && ((SECONDS < deadline)); do
            sleep 0.2
        done
        "$alive" >/dev/null && die "could not stop the $label (pid $pid)"
    fi
    return 0
}
