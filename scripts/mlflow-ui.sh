#!/usr/bin/env bash
# `make ui`: run `mlflow ui ARGS...` so that SIGTERM, SIGINT (Ctrl-C) or SIGHUP stops every one of its
# processes. mlflow ui starts a server with worker processes (uvicorn, a job runner) that outlive a plain
# SIGTERM to mlflow itself; here the UI runs in its own process group, and a signal to this script is passed
# to that whole group (SIGKILL for what is still alive after 10 s). Usage: mlflow-ui.sh MLFLOW [ARGS...]
set -u
mlflow=$1
shift
set -m  # job control: the background job below gets a process group of its own (its id = its pid)
"$mlflow" ui "$@" &
group=$!
set +m

stop_group() {
    kill -TERM -- "-$group" 2>/dev/null
    for _ in $(seq 100); do
        kill -0 -- "-$group" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL -- "-$group" 2>/dev/null
}

trap 'stop_group; exit 143' TERM
trap 'stop_group; exit 130' INT
trap 'stop_group; exit 129' HUP
wait "$group"
status=$?
stop_group  # the server ended on its own: its workers go with it
exit "$status"
