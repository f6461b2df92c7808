#!/usr/bin/env bash
# slurm-local.sh - a throw-away, single-node Slurm cluster for trying things out.
#
# What it is for
#   Trying tinyllm's Slurm executor on one machine (a laptop, a VM, a CI
#   runner). The CI job uses it to get a real `sbatch`/`squeue`/`sacct`/
#   `scancel` to test against. It is NOT meant for production: everything runs
#   as root, the database password lives in the state folder, there are no
#   cgroups, no resource limits and no security hardening.
#
# Usage
#   slurm-local.sh start    install what is missing, write configs, start daemons
#                           (does nothing but report when everything is already up)
#   slurm-local.sh stop     stop the daemons this script started (packages stay)
#   slurm-local.sh restart  stop, then start
#   slurm-local.sh status   say which daemons run, show `sinfo`;
#                           exit status 0 when all are up, 3 otherwise
#   start/stop/restart need root; they re-run themselves through sudo if needed.
#
# What it installs (Debian/Ubuntu, via apt-get, only what is missing)
#   slurmctld slurmd slurm-client munge slurmdbd mariadb-server
#   Written for Debian bookworm's Slurm 22.05; nothing in it is 22.05-only.
#
# What it runs (all started by hand; no systemd needed)
#   munged    as user munge, default socket /run/munge/munge.socket.2, key
#             /etc/munge/munge.key (created if missing); reused as-is if a
#             munged is already answering. Log: /var/log/munge/munged.log
#   mariadbd  a private instance (own datadir, 127.0.0.1:$SLURM_LOCAL_DB_PORT,
#             default 3307, so it never collides with a system MySQL/MariaDB);
#             holds the accounting database slurm_acct_db
#   slurmdbd  accounting daemon (port 6819); this is what makes `sacct` work
#   slurmctld controller (port 6817), slurmd compute daemon (port 6818)
#   Cluster layout: one node named `hostname -s` with CPUs=`nproc` and
#   RealMemory=`free -m` total minus a margin, one partition `debug`
#   (default, no time limit), select/cons_tres + CR_Core so several 1-CPU
#   jobs share the node, proctrack/linuxproc + task/none (no cgroups).
#
# Where things go
#   State folder: $SLURM_LOCAL_DIR (default /var/tmp/tinyllm-slurm)
#     slurm.conf, slurmdbd.conf (mode 600), db-password (mode 600)
#     log/      slurmctld.log slurmd.log slurmdbd.log mariadb.log
#     run/      pid files of the daemons this script started, MariaDB socket
#     slurmctld/ (StateSaveLocation), slurmd/ (SlurmdSpoolDir), mysql/ (datadir)
#   Slurm commands find their config through /etc/slurm/slurm.conf: we chose a
#   SYMLINK /etc/slurm/slurm.conf -> $SLURM_LOCAL_DIR/slurm.conf (rather than
#   asking users to export SLURM_CONF), so plain `sbatch`, `squeue`, `sacct`
#   work without environment variables. A pre-existing regular file there is
#   moved aside to slurm.conf.bak-slurm-local once. The daemons themselves are
#   started with SLURM_CONF pointing into the state folder, so slurmdbd reads
#   the slurmdbd.conf next to it.
#   `rm -rf $SLURM_LOCAL_DIR` (after `stop`) resets everything: job ids,
#   accounting history, database.
#
# Environment knobs
#   SLURM_LOCAL_DIR      state folder             (default /var/tmp/tinyllm-slurm)
#   SLURM_LOCAL_CLUSTER  ClusterName              (default tinyllm)
#   SLURM_LOCAL_DB_PORT  private MariaDB TCP port (default 3307)
#   SLURM_LOCAL_TIMEOUT  seconds to wait for each daemon (default 60)
#
# Quirks worth knowing
#   * Slurm 22.05's sacct has no --completion, so finished jobs are only
#     visible through slurmdbd; hence the MariaDB + slurmdbd stack.
#   * Bare `sacct` only shows jobs since midnight; use `sacct -j ID` or -S.
#   * Plain `squeue` (also `squeue -j ID`) never lists finished jobs;
#     `squeue -t all` and `scontrol show job` keep them for MinJobAge (30 s)
#     or a little longer. sacct keeps them for good.
#   * sacct learns about a job shortly after slurmctld does: a job just
#     submitted may be missing from sacct for ~1 s, and array elements can
#     take a few seconds to all appear; poll rather than query once.
#   * An `afterok` dependency on a job that failed stays PENDING with reason
#     DependencyNeverSatisfied (Slurm's default) until scancel'ed.
#   * `stop` does not cancel running jobs; they keep running and are picked
#     up again by the next `start`.
#   * When started through sudo, the invoking user is added to accounting
#     under account `local` (cosmetic: accounting is not enforced, any user
#     can submit).
#   * On a systemd host the packaged units (slurmctld, slurmd, mariadb, munge)
#     may also be enabled by apt; this script does not use them. Disable the
#     slurm ones (`systemctl disable --now slurmctld slurmd`) if they get in
#     the way: they would read the same /etc/slurm/slurm.conf.

set -euo pipefail

STATE="${SLURM_LOCAL_DIR:-/var/tmp/tinyllm-slurm}"
CLUSTER="${SLURM_LOCAL_CLUSTER:-tinyllm}"
DB_PORT="${SLURM_LOCAL_DB_PORT:-3307}"
TIMEOUT="${SLURM_LOCAL_TIMEOUT:-60}"

CONF="$STATE/slurm.conf"
DBD_CONF="$STATE/slurmdbd.conf"
LOG="$STATE/log"
RUN="$STATE/run"
DB_DIR="$STATE/mysql"
DB_SOCK="$RUN/mysqld.sock"
ETC_CONF=/etc/slurm/slurm.conf
MUNGE_KEY=/etc/munge/munge.key
MUNGE_LOG=/var/log/munge/munged.log
NODE="$(hostname -s)"
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)

# ---------------------------------------------------------------- helpers ---

log() { printf '[slurm-local] %s\n' "$*"; }
die() { printf '[slurm-local] ERROR: %s\n' "$*" >&2; exit 1; }

# Show the end of a log file on stderr (used when a daemon fails to come up).
show_log_tail() {
    if [[ -r "$1" ]]; then
        printf -- '--- last lines of %s ---\n' "$1" >&2
        tail -n 20 "$1" >&2 || true
    fi
}

# wait_for DESCRIPTION LOGFILE COMMAND...: retry COMMAND every second until it
# succeeds or $TIMEOUT seconds have passed; on timeout, die naming the log.
wait_for() {
    local what="$1" logfile="$2" deadline=$((SECONDS + TIMEOUT))
    shift 2
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            show_log_tail "$logfile"
            die "$what not ready after ${TIMEOUT}s; see $logfile"
        fi
        sleep 1
    done
}

# pid_alive NAME: true if $RUN/NAME.pid names a live process whose command
# is NAME (mariadb may also show up as mysqld). Guards against pid reuse.
pid_alive() {
    local name="$1" pid comm
    [[ -r "$RUN/$name.pid" ]] || return 1
    pid="$(tr -dc '0-9' <"$RUN/$name.pid")"
    [[ -n "$pid" ]] || return 1
    # /proc rather than `kill -0`, which fails for non-root callers of `status`.
    comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
    case "$name:$comm" in
        mariadb:mariadbd | mariadb:mysqld | "$name:$name") return 0 ;;
        *) return 1 ;;
    esac
}

munge_works() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

# Slurm client commands, bounded so a dead daemon cannot hang us.
ctld_up() { timeout 10 scontrol ping 2>/dev/null | grep -q 'is UP'; }
dbd_up() { timeout 10 sacctmgr -n -P show cluster format=cluster >/dev/null 2>&1; }
node_state() { timeout 10 sinfo -h -N -n "$NODE" -o '%t' 2>/dev/null | head -n 1; }
node_ready() { [[ "$(node_state)" =~ ^(idle|mix|alloc)$ ]]; }
cluster_registered() {
    # slurmctld fills in ControlHost once it has registered with slurmdbd.
    [[ -n "$(timeout 10 sacctmgr -n -P show cluster "$CLUSTER" format=controlhost 2>/dev/null)" ]]
}

all_up() {
    munge_works && pid_alive mariadb && pid_alive slurmdbd && pid_alive slurmctld &&
        pid_alive slurmd && ctld_up && dbd_up && node_ready
}

# Re-run this script as root (through sudo) unless we already are root.
need_root() {
    if ((EUID != 0)); then
        command -v sudo >/dev/null || die "must run as root (sudo not found)"
        exec sudo --preserve-env=SLURM_LOCAL_DIR,SLURM_LOCAL_CLUSTER,SLURM_LOCAL_DB_PORT,SLURM_LOCAL_TIMEOUT \
            -- bash "$(readlink -f "${BASH_SOURCE[0]}")" "$@"
    fi
}

# ---------------------------------------------------------------- install ---

install_packages() {
    local pkg missing=()
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # First try without refreshing the index (fast); on failure update and retry.
    if ! apt-get install -y -qq "${missing[@]}" >/dev/null; then
        log "apt-get install failed; running apt-get update and retrying"
        apt-get update -qq || { sleep 5; apt-get update -qq; }
        apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# ---------------------------------------------------------------- configs ---

# install_file SRC DEST MODE: move SRC over DEST only if the content differs
# (keeps mtimes stable and tells us whether a running daemon is stale).
install_file() {
    local src="$1" dest="$2" mode="$3"
    chmod "$mode" "$src"
    if [[ -f "$dest" ]] && cmp -s "$src" "$dest"; then
        rm -f "$src"
        return 1
    fi
    mv -f "$src" "$dest"
}

write_configs() {
    mkdir -p "$STATE" "$LOG" "$RUN" "$STATE/slurmctld" "$STATE/slurmd"
    chmod 755 "$STATE" "$LOG" "$RUN"

    local cpus mem_total margin real_mem changed=0 tmp
    cpus="$(nproc)"
    mem_total="$(free -m | awk '/^Mem:/ {print $2}')"
    # Leave 10% (at most 1 GiB) for the OS so slurmd never reports less memory
    # than configured.
    margin=$((mem_total / 10))
    ((margin > 1024)) && margin=1024
    real_mem=$((mem_total - margin))
    ((real_mem < 1)) && real_mem=1

    # The database password is generated once and kept in the state folder.
    if [[ ! -s "$STATE/db-password" ]]; then
        (umask 077 && head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24 >"$STATE/db-password")
    fi
    chmod 600 "$STATE/db-password"

    tmp="$(mktemp "$STATE/.slurm.conf.XXXXXX")"
    cat >"$tmp" <<EOF
# Generated by slurm-local.sh -- rewritten on every start, do not edit.
# Single-node test cluster; not for production.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge

StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info

# No cgroups: plain process tracking, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
# Trust this file over hardware detection (containers often disagree).
SlurmdParameters=config_overrides
ReturnToService=2

# Cores are the consumable resource, so 1-CPU jobs can run side by side.
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core

# Finished jobs stay in "squeue -t all" and "scontrol show job" for ~30 s;
# sacct keeps them.
MinJobAge=30
KillWait=5
InactiveLimit=0
# No mail on this box; the default (/bin/mail) is usually missing and logs errors.
MailProg=/bin/true

# Accounting through slurmdbd (this is what makes sacct list finished jobs).
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30

NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE CPUs=$cpus RealMemory=$real_mem State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    install_file "$tmp" "$CONF" 644 && changed=1

    tmp="$(mktemp "$STATE/.slurmdbd.conf.XXXXXX")"
    cat >"$tmp" <<EOF
# Generated by slurm-local.sh -- rewritten on every start, do not edit.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(cat "$STATE/db-password")
StorageLoc=slurm_acct_db
EOF
    # slurmdbd refuses a config readable by others; SlurmUser is root.
    chown root:root "$tmp"
    install_file "$tmp" "$DBD_CONF" 600 && changed=1

    # Point the default config location at ours (see header: symlink chosen).
    mkdir -p /etc/slurm
    if [[ -e "$ETC_CONF" && ! -L "$ETC_CONF" && ! -e "$ETC_CONF.bak-slurm-local" ]]; then
        log "moving existing $ETC_CONF to $ETC_CONF.bak-slurm-local"
        mv "$ETC_CONF" "$ETC_CONF.bak-slurm-local"
    fi
    ln -sfn "$CONF" "$ETC_CONF"

    if ((changed)) && { pid_alive slurmctld || pid_alive slurmdbd || pid_alive slurmd; }; then
        log "WARNING: configuration changed while daemons run; use 'restart' to apply it"
    fi
}

# ---------------------------------------------------------------- daemons ---

start_munge() {
    if munge_works; then
        log "munged: already running"
        return 0
    fi
    if [[ ! -s "$MUNGE_KEY" ]]; then
        log "creating $MUNGE_KEY"
        mkdir -p /etc/munge
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile="$MUNGE_KEY"
        else
            dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
        fi
    fi
    # munged is picky: key and its directories must belong to munge, private.
    chown munge:munge /etc/munge "$MUNGE_KEY"
    chmod 700 /etc/munge
    chmod 600 "$MUNGE_KEY"
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    chmod 755 /run/munge
    chmod 711 /var/lib/munge
    chmod 700 /var/log/munge

    log "starting munged"
    runuser -u munge -- /usr/sbin/munged --force </dev/null >/dev/null 2>&1 ||
        { show_log_tail "$MUNGE_LOG"; die "munged failed to start; see $MUNGE_LOG"; }
    wait_for munged "$MUNGE_LOG" munge_works
    # Remember it as ours so that `stop` stops it.
    cp /run/munge/munged.pid "$RUN/munged.pid"
}

db_sql() { mariadb --no-defaults --socket="$DB_SOCK" -uroot; }

start_mariadb() {
    if pid_alive mariadb; then
        log "mariadb: already running"
    else
        if [[ ! -d "$DB_DIR/mysql" ]]; then
            log "initialising MariaDB datadir $DB_DIR"
            mkdir -p "$DB_DIR"
            mariadb-install-db --no-defaults --user=root --datadir="$DB_DIR" \
                --auth-root-authentication-method=socket --skip-test-db \
                >>"$LOG/mariadb.log" 2>&1 ||
                { show_log_tail "$LOG/mariadb.log"; die "mariadb-install-db failed; see $LOG/mariadb.log"; }
        fi
        log "starting mariadb on 127.0.0.1:$DB_PORT"
        local server=/usr/sbin/mariadbd
        [[ -x "$server" ]] || server=/usr/sbin/mysqld
        # mariadbd stays in the foreground; detach it fully (no inherited fds,
        # otherwise a CI step capturing our output would never finish).
        setsid "$server" --no-defaults --user=root --datadir="$DB_DIR" \
            --socket="$DB_SOCK" --pid-file="$RUN/mariadb.pid" \
            --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
            --log-error="$LOG/mariadb.log" \
            --innodb-buffer-pool-size=512M --innodb-log-file-size=64M \
            --innodb-lock-wait-timeout=900 \
            </dev/null >>"$LOG/mariadb.log" 2>&1 &
        local pid=$! deadline=$((SECONDS + TIMEOUT))
        until mariadb-admin --no-defaults --socket="$DB_SOCK" -uroot ping >/dev/null 2>&1; do
            if ! kill -0 "$pid" 2>/dev/null || ((SECONDS >= deadline)); then
                show_log_tail "$LOG/mariadb.log"
                die "mariadb did not come up (within ${TIMEOUT}s); see $LOG/mariadb.log"
            fi
            sleep 1
        done
        wait_for "mariadb pid file" "$LOG/mariadb.log" pid_alive mariadb
        chmod 644 "$RUN/mariadb.pid" # so that `status` works without root
    fi
    # Idempotent: database and the slurmdbd user (password from the state folder).
    local pw
    pw="$(cat "$STATE/db-password")"
    db_sql <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pw';
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$pw';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
EOF
}

start_slurmdbd() {
    if pid_alive slurmdbd; then
        log "slurmdbd: already running"
    else
        log "starting slurmdbd"
        SLURM_CONF="$CONF" slurmdbd </dev/null >>"$LOG/slurmdbd.log" 2>&1 ||
            { show_log_tail "$LOG/slurmdbd.log"; die "slurmdbd failed to start; see $LOG/slurmdbd.log"; }
    fi
    # The first start creates the tables, which takes a few seconds.
    wait_for slurmdbd "$LOG/slurmdbd.log" dbd_up

    # slurmctld can only record jobs for a cluster that exists in the database.
    if [[ -z "$(sacctmgr -n -P show cluster "$CLUSTER" format=cluster 2>/dev/null)" ]]; then
        log "registering cluster $CLUSTER in accounting"
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
    # Not strictly needed (accounting is not enforced), but gives jobs of the
    # invoking user a proper account in sacct.
    local user="${SUDO_USER:-}"
    if [[ -n "$user" && "$user" != root ]] &&
        [[ -z "$(sacctmgr -n -P show assoc cluster="$CLUSTER" user="$user" format=user 2>/dev/null)" ]]; then
        log "adding user $user to accounting"
        sacctmgr -i add account local cluster="$CLUSTER" description=slurm-local organization=local >/dev/null 2>&1 || true
        sacctmgr -i add user "$user" account=local cluster="$CLUSTER" >/dev/null
    fi
}

start_slurmctld() {
    if pid_alive slurmctld; then
        log "slurmctld: already running"
    else
        log "starting slurmctld"
        SLURM_CONF="$CONF" slurmctld </dev/null >>"$LOG/slurmctld.log" 2>&1 ||
            { show_log_tail "$LOG/slurmctld.log"; die "slurmctld failed to start; see $LOG/slurmctld.log"; }
    fi
    wait_for slurmctld "$LOG/slurmctld.log" ctld_up
}

start_slurmd() {
    if pid_alive slurmd; then
        log "slurmd: already running"
    else
        log "starting slurmd"
        SLURM_CONF="$CONF" slurmd </dev/null >>"$LOG/slurmd.log" 2>&1 ||
            { show_log_tail "$LOG/slurmd.log"; die "slurmd failed to start; see $LOG/slurmd.log"; }
    fi
    local deadline=$((SECONDS + TIMEOUT))
    until node_ready; do
        if ((SECONDS >= deadline)); then
            show_log_tail "$LOG/slurmd.log"
            timeout 10 sinfo -R >&2 || true
            die "node $NODE is '$(node_state)', not idle after ${TIMEOUT}s; see $LOG/slurmd.log and $LOG/slurmctld.log"
        fi
        sleep 1
    done
}

# stop_daemons NAME...: TERM the processes named by $RUN/NAME.pid (only live
# ones that really are NAME), wait for all of them, KILL after $TIMEOUT s.
stop_daemons() {
    local name pid deadline pids=()
    for name in "$@"; do
        if pid_alive "$name"; then
            pid="$(tr -dc '0-9' <"$RUN/$name.pid")"
            log "stopping $name (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
        rm -f "$RUN/$name.pid"
    done
    deadline=$((SECONDS + TIMEOUT))
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null; do
            if ((SECONDS >= deadline)); then
                log "pid $pid did not exit after ${TIMEOUT}s; killing it"
                kill -KILL "$pid" 2>/dev/null || true
                break
            fi
            sleep 0.2
        done
    done
}

# --------------------------------------------------------------- commands ---

cmd_start() {
    if [[ -d "$STATE" ]] && all_up; then
        log "already up (node $NODE is $(node_state)); nothing to do"
        return 0
    fi
    local t0=$SECONDS
    install_packages
    write_configs
    start_munge
    start_mariadb
    start_slurmdbd   # before slurmctld, so slurmctld can register right away
    start_slurmctld
    start_slurmd
    wait_for "registration of slurmctld with slurmdbd" "$LOG/slurmctld.log" cluster_registered
    log "up in $((SECONDS - t0))s: cluster $CLUSTER, node $NODE, partition debug"
    log "state and logs: $STATE   (config: $ETC_CONF -> $CONF)"
    timeout 10 sinfo || true
}

cmd_stop() {
    # Slurm daemons first (slurmctld flushes job records to slurmdbd on exit),
    # then slurmdbd, then what it needs. munged only if we started it.
    # Running jobs are not cancelled (see header).
    stop_daemons slurmd slurmctld
    stop_daemons slurmdbd
    stop_daemons mariadb munged
    log "stopped (packages and $STATE are kept)"
}

cmd_status() {
    local name rc=0
    for name in munged mariadb slurmdbd slurmctld slurmd; do
        if pid_alive "$name"; then
            printf '%-10s running (pid %s)\n' "$name" "$(tr -dc '0-9' <"$RUN/$name.pid")"
        elif [[ "$name" == munged ]] && munge_works; then
            printf '%-10s running (not started by this script)\n' "$name"
        else
            printf '%-10s not running\n' "$name"
            rc=3
        fi
    done
    echo
    if ctld_up; then
        timeout 10 sinfo || true
    else
        echo "sinfo: slurmctld not reachable"
        rc=3
    fi
    return "$rc"
}

usage() {
    echo "usage: $(basename "$0") {start|stop|restart|status}" >&2
    exit 2
}

main() {
    (($# == 1)) || usage
    case "$1" in
        start) need_root "$@"; cmd_start ;;
        stop) need_root "$@"; cmd_stop ;;
        restart) need_root "$@"; cmd_stop; cmd_start ;;
        status) cmd_status ;;
        *) usage ;;
    esac
}

main "$@"
