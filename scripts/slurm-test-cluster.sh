#!/usr/bin/env bash
# slurm-test-cluster.sh -- a real, single-node Slurm cluster on this machine, for kdbench's
# Slurm/submitit tests. Debian 12 (slurm-wlm 22.05), run as root, no systemd needed.
#
# Usage:
#   sudo bash scripts/slurm-test-cluster.sh up       # install what is missing, configure, start, wait
#   sudo bash scripts/slurm-test-cluster.sh down     # cancel jobs, stop every daemon it started
#   bash scripts/slurm-test-cluster.sh status        # sinfo + scontrol ping; exit 0 iff it answers
#   bash scripts/slurm-test-cluster.sh check         # submitit round trip (uses ${PYTHON:-python3})
#
# `up` is idempotent: packages are installed only when missing, daemons already running are
# left alone (restarted only when the generated config changed), and it returns once the node
# is idle and `sacct` answers. In CI:  FRESH=1 ... up; trap '... down' EXIT.
#
# Environment knobs (for `up`):
#   FAKE_GPUS=N      advertise N "gpu" GRES backed by fake character devices (default 0), so jobs
#                    with --gpus-per-node / --gres=gpu run and get CUDA_VISIBLE_DEVICES
#   FRESH=1          forget everything: stops the daemons if needed, wipes slurmctld's state
#                    (job ids restart at 1) and the accounting database
#   CPUS=N           advertise N cores instead of what slurmd detects (SlurmdParameters=
#                    config_overrides): more jobs than real cores can run at once, so that in
#                    tests GPUs, not cores, limit how many run together
#   PARTITION=name   the (default) partition (default: debug)
#   CLUSTER=name     ClusterName (default: kdbench; Slurm lower-cases it)
#   UP_TIMEOUT=secs  how long to wait for each daemon / the node (default 60)
#   PYTHON=...       interpreter for `check` (default python3; must have submitit)
#
# What you get: munged, MariaDB (unix socket only) + slurmdbd (so sacct works), slurmctld and
# slurmd, all on 127.0.0.1, logs in /var/log/slurm, pid files in /run/slurm. Cores and memory
# are consumable (CR_Core_Memory, DefMemPerCPU) so small jobs share the node; memory is used
# for scheduling only (no cgroups here). Test-friendly timings: a requeued job may restart
# after ~10 s (cred_expire=10) and the scheduler runs every 5 s. MaxArraySize is set
# explicitly to Slurm's default, 1001: array indices 0..1000.
set -euo pipefail

ME="slurm-test-cluster"
PARTITION=${PARTITION:-debug}
CLUSTER=$(tr '[:upper:]' '[:lower:]' <<<"${CLUSTER:-kdbench}")
FAKE_GPUS=${FAKE_GPUS:-0}
FRESH=${FRESH:-0}
UP_TIMEOUT=${UP_TIMEOUT:-60}

ETC=/etc/slurm
RUN=/run/slurm
LOGS=/var/log/slurm
CTLD_STATE=/var/lib/slurm/slurmctld
SLURMD_SPOOL=/var/lib/slurm/slurmd
GPU_DEV_DIR=$RUN/fake-gpu
DB_NAME=slurm_acct_db
DB_SOCK=/run/mysqld/mysqld.sock
PKGS=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)

# daemon table: name -> "pidfile logfile"   (name is also what /proc/PID/comm must say)
declare -A PIDFILE=(
  [munged]=/run/munge/munged.pid
  [mariadbd]=/run/mysqld/mysqld.pid
  [slurmdbd]=$RUN/slurmdbd.pid
  [slurmctld]=$RUN/slurmctld.pid
  [slurmd]=$RUN/slurmd.pid
)
declare -A LOGFILE=(
  [munged]=/var/log/munge/munged.log
  [mariadbd]=$LOGS/mariadb.err
  [slurmdbd]=$LOGS/slurmdbd.log
  [slurmctld]=$LOGS/slurmctld.log
  [slurmd]=$LOGS/slurmd.log
)

say()  { printf '[%s %s] %s\n' "$ME" "$(date +%T)" "$*"; }
fail() { printf '[%s %s] ERROR: %s\n' "$ME" "$(date +%T)" "$*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || fail "'$1' must run as root"; }

# ------------------------------------------------------------------------- process helpers
# pid_is PID NAME: PID exists, runs NAME, and is not a zombie (an exited daemon may stay
# <defunct> for a while before init reaps it).
pid_is() {
  local pid=$1 name=$2
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || return 1
  [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}

# running NAME: the PID in NAME's pid file is alive and really is NAME
running() {
  local pf=${PIDFILE[$1]}
  [ -s "$pf" ] && pid_is "$(cat "$pf" 2>/dev/null)" "$1"
}

# show_logs NAME: what to look at when NAME failed (its log + what it printed on start-up)
show_logs() {
  local f
  for f in "${LOGFILE[$1]}" "$LOGS/$1.console"; do
    [ -s "$f" ] || continue
    echo "---- last lines of $f ----" >&2
    tail -n 20 "$f" >&2
  done
}

# poll SECONDS CMD...: retry CMD (quietly) every 0.2 s for up to SECONDS
poll() {
  local until=$(( $(date +%s) + $1 )); shift
  while ! "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$until" ] || return 1
    sleep 0.2
  done
}

# await_daemon NAME CMD...: wait until CMD succeeds; give up early if NAME died (Slurm daemons
# fork and exit 0 before they validate anything, so only the log tells what went wrong).
# On failure prints the probe's last output and the daemon's log tail.
await_daemon() {
  local name=$1; shift
  local t0 out dt; t0=$(date +%s)
  while ! out=$("$@" 2>&1); do
    dt=$(( $(date +%s) - t0 ))
    if [ "$dt" -ge 2 ] && ! running "$name"; then
      echo "[$ME] $name is not running (died during start-up?)" >&2; show_logs "$name"; return 1
    fi
    if [ "$dt" -ge "$UP_TIMEOUT" ]; then
      echo "[$ME] $name not ready after ${UP_TIMEOUT}s; last probe ($*) said:" >&2
      printf '%s\n' "$out" | tail -n 5 >&2
      show_logs "$name"; return 1
    fi
    sleep 0.2
  done
}

# stop NAME: SIGTERM the PID from NAME's pid file (after checking /proc/PID/comm), wait for it
# to exit (SIGKILL after 30 s). Never by name: other Slurm/MariaDB instances are not ours.
stop() {
  local name=$1 pf=${PIDFILE[$1]} pid i
  if ! running "$name"; then
    if [ -e "$pf" ]; then say "$name: not running, removing stale $pf"; rm -f "$pf"; fi
    return 0
  fi
  pid=$(cat "$pf")
  say "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do pid_is "$pid" "$name" || break; sleep 0.2; done
  if pid_is "$pid" "$name"; then
    say "$name (pid $pid) still alive after 30 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pf"
}

# cancel_jobs: cancel every job and wait (up to 30 s) until none is running or completing
cancel_jobs() {
  running slurmctld && scontrol ping 2>/dev/null | grep -q 'is UP' || return 0
  local ids
  ids=$(squeue -h -o %A 2>/dev/null | sort -un | tr '\n' ' ')
  [ -n "${ids// /}" ] || return 0
  say "cancelling jobs: $ids"
  # shellcheck disable=SC2086
  scancel $ids 2>/dev/null || true
  poll 30 bash -c '[ -z "$(squeue -h -t R,CG,S,CF -o %A 2>/dev/null)" ]' ||
    say "warning: jobs still on the node after 30 s"
}

# ------------------------------------------------------------------------- up: the steps
install_packages() {
  local p missing=() own_policy=0
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  say "installing ${missing[*]}"
  # the postinst scripts would start the daemons (unconfigured): forbid it for the install
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# added by %s for the duration of apt-get install\nexit 101\n' "$ME" >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  local rc=0
  { apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } || rc=$?
  [ "$own_policy" = 0 ] || rm -f /usr/sbin/policy-rc.d
  [ "$rc" = 0 ] || fail "apt-get failed (exit $rc)"
  id slurm >/dev/null && id munge >/dev/null && id mysql >/dev/null || fail "service users missing after install"
}

ensure_hostname() {
  NODE=$(hostname -s)
  # slurmctld only runs where `hostname -s` is SlurmctldHost; munged wants the name to resolve
  if ! getent hosts "$NODE" >/dev/null; then
    say "adding $NODE to /etc/hosts"
    printf '127.0.0.1\t%s\n' "$NODE" >>/etc/hosts
  fi
}

make_dirs() {
  install -d -o slurm -g slurm -m 0755 "$RUN" "$LOGS" "$CTLD_STATE"
  install -d -o root -g root -m 0755 "$SLURMD_SPOOL" "$ETC"
  install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge
  install -d -o munge -g munge -m 0711 /var/lib/munge
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o mysql -g mysql -m 0755 /run/mysqld
}

# forget_everything: FRESH=1 -- jobs, slurmctld state, accounting records
forget_everything() {
  cancel_jobs
  stop slurmd; stop slurmctld; stop slurmdbd
  say "FRESH=1: wiping $CTLD_STATE and the accounting database"
  find "$CTLD_STATE" -mindepth 1 -delete
  WIPE_DB=1
}

# gres_conf / slurm_conf print the wanted file contents (compared with what is on disk)
gres_conf() {
  [ "$FAKE_GPUS" -gt 0 ] || return 0
  # gres/gpu is counted only when it is backed by device files; character devices with the
  # NVIDIA major (195) are enough, nothing ever opens them
  printf '# written by %s: %s fake GPUs\nAutoDetect=off\n' "$ME" "$FAKE_GPUS"
  printf 'NodeName=%s Name=gpu File=%s/nvidia[0-%d]\n' "$NODE" "$GPU_DEV_DIR" $((FAKE_GPUS - 1))
}

slurm_conf() {
  local hw cpus sockets cores threads mem
  hw=$(slurmd -C 2>/dev/null | head -n1)
  field() { sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p" <<<"$hw"; }
  cpus=$(field CPUs); sockets=$(field SocketsPerBoard); cores=$(field CoresPerSocket)
  threads=$(field ThreadsPerCore); mem=$(field RealMemory)
  [ -n "$cpus" ] && [ -n "$mem" ] || fail "cannot parse 'slurmd -C': $hw"
  local overrides="# the node is configured as slurmd detects it"
  if [ -n "${CPUS:-}" ]; then
    # advertise CPUS cores (tests: make GPUs, not cores, the scarce resource); config_overrides
    # keeps slurmd from draining a node that claims more than it has
    cpus=$CPUS; sockets=1; cores=$CPUS; threads=1; overrides="SlurmdParameters=config_overrides"
  fi
  # a node that advertises more memory than slurmd detects is drained: keep 5% headroom
  local realmem=$((mem * 95 / 100))
  local gres_types="" node_gres=""
  if [ "$FAKE_GPUS" -gt 0 ]; then
    # AccountingStorageTRES: sacct's AllocTRES then shows gres/gpu=N too
    gres_types="GresTypes=gpu"$'\n'"AccountingStorageTRES=gres/gpu"; node_gres=" Gres=gpu:$FAKE_GPUS"
  fi
  cat <<EOF
# written by $ME (kdbench) -- one node, no systemd, no cgroups. Regenerated by 'up'.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
# a requeued job may start again after cred_expire seconds (default 120)
AuthInfo=cred_expire=10
SlurmctldPort=6817
SlurmdPort=6818
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
StateSaveLocation=$CTLD_STATE
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
# process tracking without cgroups
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
# cores and memory are consumable: several small jobs share the node. Without DefMemPerCPU a
# job without --mem would take all the memory and jobs would run one at a time.
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
# refuse at submit time what can never run (instead of PENDING forever)
EnforcePartLimits=ALL
# schedule every 5 s (defaults 60 s / 30 s): quick starts after a requeue
SchedulerParameters=batch_sched_delay=0,sched_interval=5,bf_interval=5
JobRequeue=1
# Slurm's default, set explicitly: array indices 0..1000
MaxArraySize=1001
KillWait=5
ReturnToService=2
# accounting through slurmdbd (sacct)
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
${gres_types:-# no GRES (FAKE_GPUS=0)}
$overrides
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus Sockets=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads RealMemory=$realmem$node_gres State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

# write_if_changed FILE CONTENT -> returns 0 if FILE was (re)written
write_if_changed() {
  local f=$1 content=$2
  if [ -z "$content" ]; then
    [ -e "$f" ] || return 1
    rm -f "$f"; say "removed $f"; return 0
  fi
  [ "$(cat "$f" 2>/dev/null)" != "$content" ] || return 1
  printf '%s\n' "$content" >"$f"
  chmod 644 "$f"
  say "wrote $f"
}

write_configs() {
  if [ "$FAKE_GPUS" -gt 0 ]; then
    install -d -m 0755 "$GPU_DEV_DIR"
    local i
    for ((i = 0; i < FAKE_GPUS; i++)); do
      [ -c "$GPU_DEV_DIR/nvidia$i" ] || mknod -m 0666 "$GPU_DEV_DIR/nvidia$i" c 195 "$i"
    done
  fi
  CONF_CHANGED=0
  if write_if_changed "$ETC/gres.conf" "$(gres_conf)"; then CONF_CHANGED=1; fi
  local conf; conf=$(slurm_conf)   # exits here (set -e) if slurmd -C could not be parsed
  [ -n "$conf" ] || fail "empty slurm.conf generated"
  if write_if_changed "$ETC/slurm.conf" "$conf"; then CONF_CHANGED=1; fi
  # every Slurm client parses slurm.conf first; this one needs no daemon and answers at once
  local err
  err=$(scontrol show hostnames "$NODE" 2>&1 >/dev/null) || fail "$ETC/slurm.conf does not parse: $err"
}

start_munge() {
  if [ ! -s /etc/munge/munge.key ]; then
    say "creating the munge key"
    mungekey --create --keyfile=/etc/munge/munge.key
  fi
  # munged refuses a key that others can read or that it does not own
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  if running munged; then return 0; fi
  rm -f "${PIDFILE[munged]}" /run/munge/munge.socket.2*
  say "starting munged (user munge)"
  runuser -u munge -- /usr/sbin/munged </dev/null >"$LOGS/munged.console" 2>&1 ||
    { show_logs munged; fail "munged did not start"; }
  await_daemon munged bash -c 'munge -n | unmunge' || fail "munged is not answering"
}

sql() { mariadb --socket="$DB_SOCK" -N -e "$1"; }

start_mariadb() {
  if ! running mariadbd; then
    if [ ! -d /var/lib/mysql/mysql ]; then
      say "initialising the MariaDB data directory"
      mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$LOGS/mariadb-install.log" 2>&1 ||
        { tail -n 20 "$LOGS/mariadb-install.log" >&2; fail "mariadb-install-db failed"; }
    fi
    say "starting mariadbd (unix socket only)"
    touch "${LOGFILE[mariadbd]}"; chown mysql:mysql "${LOGFILE[mariadbd]}"
    # setsid -f: its own session, so a Ctrl-C in this terminal does not reach it
    setsid -f runuser -u mysql -- /usr/sbin/mariadbd --datadir=/var/lib/mysql \
      --pid-file="${PIDFILE[mariadbd]}" --socket="$DB_SOCK" --skip-networking \
      --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 \
      --log-error="${LOGFILE[mariadbd]}" </dev/null >"$LOGS/mariadbd.console" 2>&1
    await_daemon mariadbd mariadb-admin --socket="$DB_SOCK" ping || fail "mariadbd did not come up"
  fi
  if [ "${WIPE_DB:-0}" = 1 ]; then sql "DROP DATABASE IF EXISTS $DB_NAME"; fi
  # slurmdbd's DB password: made up once, kept in slurmdbd.conf (mode 600, owner slurm)
  DB_PASS=$(sed -n 's/^StoragePass=//p' "$ETC/slurmdbd.conf" 2>/dev/null || true)
  [ -n "$DB_PASS" ] || DB_PASS=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
  sql "CREATE DATABASE IF NOT EXISTS $DB_NAME;
       CREATE USER IF NOT EXISTS 'slurm'@'localhost';
       ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
       GRANT ALL ON $DB_NAME.* TO 'slurm'@'localhost';"
}

start_slurmdbd() {
  local f=$ETC/slurmdbd.conf new
  new=$(cat <<EOF
# written by $ME (kdbench)
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
PidFile=${PIDFILE[slurmdbd]}
LogFile=${LOGFILE[slurmdbd]}
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=$DB_NAME
StorageUser=slurm
StoragePass=$DB_PASS
EOF
)
  local changed=0
  if [ "$(cat "$f" 2>/dev/null)" != "$new" ]; then
    (umask 077; printf '%s\n' "$new" >"$f"); changed=1; say "wrote $f"
  fi
  # slurmdbd refuses a config that is not private to SlurmUser
  chown slurm:slurm "$f"; chmod 600 "$f"
  if [ "$changed" = 1 ] && running slurmdbd; then stop slurmdbd; fi
  if ! running slurmdbd; then
    say "starting slurmdbd"
    /usr/sbin/slurmdbd </dev/null >"$LOGS/slurmdbd.console" 2>&1 || { show_logs slurmdbd; fail "slurmdbd did not start"; }
    await_daemon slurmdbd sacctmgr -n show cluster || fail "slurmdbd did not come up"
  fi
  # -P: otherwise sacctmgr truncates long names ("kdbenchclu+") and the test never matches
  if ! sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER"; then
    say "registering cluster '$CLUSTER' with slurmdbd"
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
  fi
}

start_slurm() {
  # plugin/GRES/node changes need a restart, `scontrol reconfigure` is not enough
  if [ "$CONF_CHANGED" = 1 ] && { running slurmd || running slurmctld; }; then
    say "configuration changed: restarting slurmctld and slurmd"
    stop slurmd; stop slurmctld
  fi
  if ! running slurmctld; then
    say "starting slurmctld"
    /usr/sbin/slurmctld </dev/null >"$LOGS/slurmctld.console" 2>&1 || { show_logs slurmctld; fail "slurmctld did not start"; }
  fi
  await_daemon slurmctld bash -c 'scontrol ping | grep -q "is UP"' || fail "slurmctld did not come up"
  if ! running slurmd; then
    say "starting slurmd"
    /usr/sbin/slurmd -N "$NODE" </dev/null >"$LOGS/slurmd.console" 2>&1 || { show_logs slurmd; fail "slurmd did not start"; }
  fi
}

node_state() { sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n1; }
node_usable() { case "$(node_state)" in idle | mixed | allocated | completing) return 0 ;; esac; return 1; }

wait_for_node() {
  # slurmd registers within a second; a node still DOWN/DRAINED after that is left over from an
  # earlier run's saved state (e.g. a bad config then): return it to service
  if ! poll 5 node_usable; then
    say "node $NODE is '$(node_state)' ($(sinfo -h -N -n "$NODE" -o %E 2>/dev/null)): resuming it"
    scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
  fi
  if ! await_daemon slurmd node_usable; then
    scontrol show node "$NODE" >&2 || true
    fail "node $NODE is not usable (state '$(node_state)')"
  fi
  # accounting end to end: slurmctld -> slurmdbd -> MariaDB
  await_daemon slurmdbd sacct -n -X -S now || fail "sacct does not answer"
}

cmd_up() {
  need_root up
  local t0; t0=$(date +%s.%N)
  [[ $FAKE_GPUS =~ ^[0-9]+$ ]] || fail "FAKE_GPUS must be a number"
  [[ $PARTITION =~ ^[A-Za-z0-9_.-]+$ ]] || fail "bad PARTITION '$PARTITION'"
  [[ $CLUSTER =~ ^[a-z0-9_-]+$ ]] || fail "bad CLUSTER '$CLUSTER'"
  install_packages
  ensure_hostname
  make_dirs
  WIPE_DB=0
  if [ "$FRESH" = 1 ]; then forget_everything; fi
  write_configs
  start_munge
  start_mariadb
  start_slurmdbd
  start_slurm
  wait_for_node
  sinfo
  say "cluster '$CLUSTER' up in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s"
}

cmd_down() {
  need_root down
  cancel_jobs
  local d
  for d in slurmd slurmctld slurmdbd mariadbd munged; do stop "$d"; done
  say "all stopped"
}

cmd_status() {
  local d rc=0
  for d in munged mariadbd slurmdbd slurmctld slurmd; do
    if running "$d"; then echo "$d: running (pid $(cat "${PIDFILE[$d]}"))"; else echo "$d: not running"; fi
  done
  scontrol ping 2>&1 | grep -q 'is UP' || rc=1
  scontrol ping 2>&1 || true
  sinfo 2>&1 || rc=1
  return $rc
}

# check: a submitit round trip -- one function, a 2-task array, and (with GRES) a GPU job
cmd_check() {
  local py=${PYTHON:-python3} dir
  "$py" -c 'import submitit' 2>/dev/null || fail "$py cannot import submitit (set PYTHON=/path/to/venv/bin/python)"
  dir=$(mktemp -d /tmp/slurm-check.XXXXXX)
  cat >"$dir/check.py" <<'EOF'
import os, sys, time
import submitit

folder, partition = sys.argv[1], sys.argv[2]
deadline = time.time() + float(os.environ.get("CHECK_TIMEOUT", "180"))

def add(a, b):
    return a + b

def gpu_env():
    return os.environ.get("CUDA_VISIBLE_DEVICES")

ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
ex.update_parameters(timeout_min=3, slurm_partition=partition, cpus_per_task=1, mem_gb=0.5)
checks = [("submit add(2, 3)", [ex.submit(add, 2, 3)], [5])]
checks.append(("map_array add", ex.map_array(add, [1, 2], [10, 20]), [11, 22]))
gpus = os.popen("sinfo -h -o %G").read().strip()
if "gpu" in gpus:
    ex.update_parameters(gpus_per_node=1)
    checks.append(("gpus_per_node=1 CUDA_VISIBLE_DEVICES", [ex.submit(gpu_env)], ["0"]))

ok = True
for name, jobs, expected in checks:
    # result() blocks forever if a job never finishes: wait under our own deadline first
    while not all(j.done() for j in jobs):
        if time.time() > deadline:
            for j in jobs:
                j.cancel(check=False)
            print(f"FAIL {name}: timed out, jobs {[j.job_id for j in jobs]} cancelled")
            sys.exit(1)
        time.sleep(1)
    try:
        got = [j.result() for j in jobs]
    except Exception as e:  # noqa: BLE001
        got = f"{type(e).__name__}: {e}"
    good = got == expected
    ok &= good
    print(f"{'ok  ' if good else 'FAIL'} {name}: jobs {[j.job_id for j in jobs]} -> {got}")
print("submitit check:", "PASSED" if ok else "FAILED")
sys.exit(0 if ok else 1)
EOF
  local rc=0
  "$py" "$dir/check.py" "$dir/jobs" "$PARTITION" || rc=$?
  if [ "$rc" = 0 ]; then rm -rf "$dir"; else echo "[$ME] check failed; job logs in $dir/jobs" >&2; fi
  return $rc
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  check) cmd_check ;;
  *) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 2 ;;
esac
