# Long-running processes of the local cluster: each one detached in its own session, logging to
# shellcheck shell=bash disable=SC2034 # a library: the scripts that source it use its settings
# $LOG_DIR/<name>.log, its pid in $RUN_DIR/<name>.pid, placed in one of our cgroups. Source after common.sh.

RUN_DIR="$STATE_DIR/run"

# The cgroup v1 hierarchies of this machine (the kubelets need their cgroup root in every one of them).
cgroup_hierarchies() { awk '$3 == "cgroup" { print $2 }' /proc/mounts; }

# cgroup_create PATH: creates $CGROUP_PARENT/PATH in every hierarchy (cpuset needs cpus and mems filled in).
cgroup_create() {
  local path="$CGROUP_PARENT/$1" h dir part
  for h in $(cgroup_hierarchies); do
    dir=$h
    for part in ${path//\// }; do
      dir+="/$part"
      [[ -d $dir ]] && continue
      mkdir "$dir"
      if [[ -f $dir/cpuset.cpus ]]; then
        cat "$(dirname "$dir")/cpuset.cpus" >"$dir/cpuset.cpus"
        cat "$(dirname "$dir")/cpuset.mems" >"$dir/cpuset.mems"
      fi
    done
  done
}

# cgroup_remove PATH: removes $CGROUP_PARENT/PATH and everything below it, deepest first, in every hierarchy
# (runc mirrors the pods' cgroups into the controller-less v2 mount too). Only empty cgroups can go: stop
# what runs in them first.
cgroup_remove() {
  local h
  for h in $(awk '$3 == "cgroup" || $3 == "cgroup2" { print $2 }' /proc/mounts); do
    [[ -d $h/$CGROUP_PARENT/$1 ]] || continue
    find "$h/$CGROUP_PARENT/$1" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [[ ! -d $h/$CGROUP_PARENT/$1 ]] || log "warning: $h/$CGROUP_PARENT/$1 is still in use"
  done
}

# alive PID: the process exists and is not a zombie.
alive() { [[ -d /proc/$1 ]] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }

# daemon_pid NAME: prints the pid of a running daemon; fails when it is not running.
daemon_pid() {
  local pidfile="$RUN_DIR/$1.pid" pid
  [[ -f $pidfile ]] || return 1
  pid=$(<"$pidfile")
  alive "$pid" && [[ $(tr '\0' ' ' </proc/"$pid"/cmdline 2>/dev/null) == "$(<"$pidfile.cmd")"* ]] || return 1
  echo "$pid"
}

# start_daemon NAME CGROUP COMMAND...: starts COMMAND unless NAME already runs.
start_daemon() {
  local name=$1 cgroup=$2; shift 2
  daemon_pid "$name" >/dev/null && return 0
  mkdir -p "$RUN_DIR" "$LOG_DIR"
  cgroup_create "$cgroup"
  (
    for h in $(cgroup_hierarchies); do echo "$BASHPID" >"$h/$CGROUP_PARENT/$cgroup/cgroup.procs"; done
    # Leave no inherited descriptor open: a caller piping our output must not wait for the daemon.
    for fd in /proc/$BASHPID/fd/*; do
      fd=${fd##*/}
      ((fd > 2)) && eval "exec $fd>&-"
    done
    exec setsid "$@" </dev/null >>"$LOG_DIR/$name.log" 2>&1
  ) &
  echo "$!" >"$RUN_DIR/$name.pid"
  printf '%s ' "$@" >"$RUN_DIR/$name.pid.cmd"
  log "started $name (pid $!, log $LOG_DIR/$name.log)"
}

# stop_daemon NAME [SECONDS]: SIGTERM, then SIGKILL after SECONDS (default 15); waits until it is gone.
stop_daemon() {
  local name=$1 secs=${2:-15} pid
  if pid=$(daemon_pid "$name"); then
    kill -CONT "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + secs))
    while alive "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
    if alive "$pid"; then
      log "$name did not stop in ${secs}s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      while alive "$pid"; do sleep 0.1; done
    fi
    log "stopped $name"
  fi
  rm -f "$RUN_DIR/$name.pid" "$RUN_DIR/$name.pid.cmd"
}
