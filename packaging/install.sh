#!/bin/bash
# Install Bolt as a systemd service from this source tree: the installation steps of the original
# server's documentation, automated and safe to run again (a second run repairs modes, upgrades the
# code and restarts the service; it never touches the configuration or the data).
#
#   packaging/install.sh [--root DIR] [--no-apt] [--no-start] [--python PATH]
#   packaging/install.sh --uninstall [--purge] [--root DIR]
#
# What it sets up (paths below DIR with --root):
#   apt packages     debootstrap, iptables, iproute2, python3-venv, ... (only the missing ones)
#   group bolt       may read the log; nothing else.  No `bolt` user: the server runs as root (below)
#   /opt/bolt/venv   a virtualenv with Bolt and its dependencies, the twistd plugin cache refreshed
#   /etc/bolt        0750 root:root; config.json (0600) made by the server's own code at install
#                    time, so a generated admin password goes to initial-admin-password (0600)
#                    instead of the group-readable log
#   /var/bolt        0750 root:root, with projects/, sandboxes/ and base_images/ (0750)
#   /var/log/bolt_server.log                      0640 root:bolt
#   /etc/systemd/system/bolt.service              enabled (multi-user.target), (re)started
#   /etc/logrotate.d/bolt
#
# Why root and not a `bolt` user: the server runs debootstrap and dpkg, mounts overlayfs, creates
# namespaces, writes cgroupfs and sysctls and programs iptables.  None of that works for an
# unprivileged user, and the capabilities it would need (CAP_SYS_ADMIN first) amount to root anyway.
# It runs as root like dockerd and incusd; the sandboxes are what get confined.
#
# --root DIR   install into a staging tree (for tests and image builds): every path goes below
#              DIR, no apt, the group goes into DIR/etc/group, the unit is enabled with
#              `systemctl --root`, nothing is started.  The venv is built at DIR/opt/bolt/venv and
#              runs from there; it is not meant to be moved.
# --no-apt     do not install apt packages (missing commands are only reported)
# --no-start   enable the unit but do not (re)start it
# --python P   the interpreter for the venv (default /usr/bin/python3, 3.11 or newer)
# --uninstall  stop and disable the service, remove the unit, the venv and the logrotate file;
#              keep /etc/bolt, /var/bolt, the log and the group
# --purge      with --uninstall: also remove /etc/bolt, /var/bolt and the logs (refused while
#              anything is still mounted below /var/bolt, i.e. while sandboxes exist).  The group
#              is kept: files (backups, images) may still carry its id.
#
# Running sandboxes are never stopped by this script: they outlive the service by design.  Delete
# them through the API before uninstalling if they should go too.
set -euo pipefail
umask 022

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROG=${0##*/}

APT_PACKAGES=(python3 python3-venv python3-dev gcc libc6-dev libseccomp-dev debootstrap iptables iproute2 util-linux
              mount procps openssl ca-certificates logrotate)
GROUP=bolt
UNIT=bolt.service
# Target paths, as seen on the installed system (below $ROOT while staging).
VENV=/opt/bolt/venv
CONF_DIR=/etc/bolt
DATA_DIR=/var/bolt
LOG_FILE=/var/log/bolt_server.log
UNIT_DIR=/etc/systemd/system
LOGROTATE_FILE=/etc/logrotate.d/bolt
MARKER=/opt/bolt/INSTALLED_BY
# The command-line client, on PATH.  /usr/local: the Debian package puts it in /usr/bin instead.
CLI_LINK=/usr/local/bin/bolt

ROOT=""
APT=1
START=1
UNINSTALL=0
PURGE=0
PYTHON=/usr/bin/python3

say() { printf '%s: %s\n' "$PROG" "$*"; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
usage() { sed -n '6,7p' "${BASH_SOURCE[0]}" | sed 's/^#  *//'; exit "${1:-2}"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --root) [ $# -ge 2 ] || usage; ROOT=$2; shift 2 ;;
        --root=*) ROOT=${1#--root=}; shift ;;
        --no-apt) APT=0; shift ;;
        --no-start) START=0; shift ;;
        --python) [ $# -ge 2 ] || usage; PYTHON=$2; shift 2 ;;
        --python=*) PYTHON=${1#--python=}; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) usage 0 ;;
        *) printf '%s: unknown argument %s\n' "$PROG" "$1" >&2; usage ;;
    esac
done

[ "$(id -u)" -eq 0 ] || die "run as root (the server itself needs root; see the comment at the top)"
[ "$PURGE" -eq 0 ] || [ "$UNINSTALL" -eq 1 ] || die "--purge goes with --uninstall"
if [ -n "$ROOT" ]; then
    case "$ROOT" in /*) ;; *) ROOT=$(pwd)/$ROOT ;; esac
    ROOT=$(realpath -m -- "$ROOT")
    [ "$ROOT" != / ] || die "--root / is the real system: leave --root out"
    APT=0
    START=0
fi

# systemd as the running init (not merely installed)?
systemd_running() { [ -z "$ROOT" ] && [ -d /run/systemd/system ]; }

# Mount points at or below a directory of the running system, one a line.
mounts_below() {
    awk -v dir="$1" '{ mp = $5; gsub(/\\040/, " ", mp)
                       if (mp == dir || index(mp, dir "/") == 1) print mp }' /proc/self/mountinfo
}

# The gid of the group, from the staging tree's group file or the system's database.
group_id() {
    if [ -n "$ROOT" ]; then
        awk -F: -v g="$GROUP" '$1 == g { print $3; exit }' "$ROOT/etc/group"
    else
        getent group "$GROUP" | cut -d: -f3
    fi
}

install_apt_packages() {
    local missing=() p
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        return
    fi
    if [ "$APT" -eq 0 ]; then
        say "not installing (--no-apt/--root): ${missing[*]}"
        return
    fi
    say "installing missing packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

ensure_group() {
    if [ -n "$ROOT" ]; then
        mkdir -p "$ROOT/etc"
        [ -e "$ROOT/etc/group" ] || install -m 0644 /dev/null "$ROOT/etc/group"
        [ -n "$(group_id)" ] || groupadd --root "$ROOT" --system "$GROUP"
    else
        getent group "$GROUP" >/dev/null || groupadd --system "$GROUP"
    fi
    [ -n "$(group_id)" ] || die "group $GROUP could not be created"
}

ensure_directories() {
    local d
    for d in "$CONF_DIR" "$DATA_DIR" "$DATA_DIR/projects" "$DATA_DIR/sandboxes" "$DATA_DIR/base_images"; do
        install -d -m 0750 -o root -g root "$ROOT$d"
    done
    install -d -m 0755 "$ROOT/opt/bolt" "$ROOT$UNIT_DIR" "$ROOT${LOGROTATE_FILE%/*}" "$ROOT${LOG_FILE%/*}"
    [ -e "$ROOT$LOG_FILE" ] || install -m 0640 /dev/null "$ROOT$LOG_FILE"
    chown "0:$(group_id)" "$ROOT$LOG_FILE"
    chmod 0640 "$ROOT$LOG_FILE"
}

ensure_venv() {
    local venv=$ROOT$VENV version
    version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])') || die "$PYTHON does not run"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$PYTHON is Python $version; Bolt needs 3.11 or newer"
    # A venv whose interpreter is gone or of another version (after a dist-upgrade) is rebuilt.
    if [ -e "$venv" ] && [ "$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" != "$version" ]; then
        say "rebuilding $venv (its interpreter is missing or not Python $version)"
        rm -rf -- "$venv"
    fi
    [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    # pip rebuilds and reinstalls a source directory every time, so a second run upgrades the code.
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "$SRC"
    # Write twisted/plugins/dropin.cache (root-owned, so the server never has to) and make sure
    # twistd finds the bolt plugin.
    "$venv/bin/python" - <<'EOF' || die "twistd does not find the bolt plugin in $venv"
import sys
from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin, getPlugins
list(getPlugins(IPlugin))
sys.exit(0 if any(p.tapname == "bolt" for p in getPlugins(IServiceMaker)) else 1)
EOF
    printf 'packaging/install.sh from %s\n' "$SRC" >"$ROOT$MARKER"
}

# The configuration is made by the server's own code (bolt.config.load), as at a first start, but
# now: a generated admin password is then written to a 0600 file instead of the log, which the
# bolt group can read.  BOLT_ADMIN_PASSWORD, when set, is used instead.  An existing file is left
# alone (the server adds keys a newer version introduces when it starts).
ensure_config() {
    local config=$ROOT$CONF_DIR/config.json
    [ -e "$config" ] && return
    BOLT_CONFIG=$config BOLT_DATA_DIR=$DATA_DIR BOLT_PASSWORD_FILE=$ROOT$CONF_DIR/initial-admin-password \
        "$ROOT$VENV/bin/python" - <<'EOF'
import os
from bolt import config
from bolt.atomic import atomic_write
conf, generated = config.load(os.environ["BOLT_CONFIG"], os.environ["BOLT_DATA_DIR"],
                              initial_password=os.environ.get("BOLT_ADMIN_PASSWORD"))
if generated:
    atomic_write(os.environ["BOLT_PASSWORD_FILE"], (generated + "\n").encode(), mode=0o600)
EOF
    if [ -e "$ROOT$CONF_DIR/initial-admin-password" ]; then
        say "created $CONF_DIR/config.json; the generated password of user 'admin' is in"
        say "  $CONF_DIR/initial-admin-password (root only): change it with PUT /api/config, then delete the file"
    else
        say "created $CONF_DIR/config.json with the password from BOLT_ADMIN_PASSWORD"
    fi
}

install_files() {
    install -m 0644 "$SRC/packaging/bolt.service" "$ROOT$UNIT_DIR/$UNIT"
    install -m 0644 "$SRC/packaging/bolt.logrotate" "$ROOT$LOGROTATE_FILE"
    install -d -m 0755 "$ROOT${CLI_LINK%/*}"
    if [ -e "$ROOT$CLI_LINK" ] || [ -L "$ROOT$CLI_LINK" ]; then
        # Someone else's bolt is left alone; ours (a link into the venv) is simply made again.
        [ "$(readlink -- "$ROOT$CLI_LINK")" = "$VENV/bin/bolt" ] || {
            say "not linking $CLI_LINK: it exists and is not ours (the client is $VENV/bin/bolt)"; return 0; }
    fi
    ln -sfn "$VENV/bin/bolt" "$ROOT$CLI_LINK"
}

# `systemctl enable` writes the [Install] symlinks itself and needs no running systemd with --root;
# without systemctl the one symlink is made by hand, the same one.
enable_unit() {
    if systemd_running; then
        systemctl daemon-reload
        systemctl enable --quiet "$UNIT"
        if [ "$START" -eq 1 ]; then
            # restart, not start: a second run must load the new code.  Sandboxes keep running.
            systemctl restart "$UNIT"
            say "bolt is running: systemctl status bolt; log in $LOG_FILE"
        fi
    elif command -v systemctl >/dev/null; then
        systemctl --root="${ROOT:-/}" enable --quiet "$UNIT"
        [ -n "$ROOT" ] || say "systemd is not running here: bolt is enabled for the next boot, not started"
    else
        install -d -m 0755 "$ROOT$UNIT_DIR/multi-user.target.wants"
        ln -sfn "$UNIT_DIR/$UNIT" "$ROOT$UNIT_DIR/multi-user.target.wants/$UNIT"
    fi
}

refuse_if_packaged() {
    [ -z "$ROOT" ] || return 0
    if dpkg-query -W -f='${Status}\n' bolt 2>/dev/null | grep -q '^install ok installed'; then
        die "the bolt Debian package is installed; it owns $VENV and the unit (remove it first: apt remove bolt)"
    fi
}

do_install() {
    if [ ! -f "$SRC/setup.py" ] || [ ! -f "$SRC/packaging/bolt.service" ]; then
        die "$SRC is not a Bolt source tree"
    fi
    refuse_if_packaged
    install_apt_packages
    ensure_group
    ensure_directories
    ensure_venv
    ensure_config
    install_files
    enable_unit
    say "installed${ROOT:+ below $ROOT}"
}

do_uninstall() {
    local mounted
    mounted=$(mounts_below "$ROOT$DATA_DIR")
    if [ "$PURGE" -eq 1 ] && [ -n "$mounted" ]; then
        die "not purging: still mounted below $ROOT$DATA_DIR (delete the sandboxes first): $(echo "$mounted" | tr '\n' ' ')"
    fi
    refuse_if_packaged
    if systemd_running; then
        systemctl disable --now --quiet "$UNIT" 2>/dev/null || true
    elif command -v systemctl >/dev/null && [ -e "$ROOT$UNIT_DIR/$UNIT" ]; then
        systemctl --root="${ROOT:-/}" disable --quiet "$UNIT" || true
    fi
    rm -f -- "$ROOT$UNIT_DIR/multi-user.target.wants/$UNIT" "$ROOT$UNIT_DIR/$UNIT" "$ROOT$LOGROTATE_FILE"
    if [ "$(readlink -- "$ROOT$CLI_LINK" 2>/dev/null)" = "$VENV/bin/bolt" ]; then
        rm -f -- "$ROOT$CLI_LINK"
    fi
    rm -rf -- "$ROOT$VENV" "$ROOT$MARKER"
    rmdir -- "$ROOT/opt/bolt" 2>/dev/null || true
    if systemd_running; then
        systemctl daemon-reload
    fi
    if [ "$PURGE" -eq 1 ]; then
        rm -rf --one-file-system -- "$ROOT$CONF_DIR" "$ROOT$DATA_DIR"
        rm -f -- "$ROOT$LOG_FILE" "$ROOT$LOG_FILE".[0-9]*
        say "purged${ROOT:+ below $ROOT}: configuration, data and logs removed; group $GROUP kept"
    else
        [ -z "$mounted" ] || say "sandboxes are still mounted below $ROOT$DATA_DIR and keep running without a server"
        say "uninstalled${ROOT:+ below $ROOT}; kept $CONF_DIR, $DATA_DIR, $LOG_FILE and group $GROUP (--purge removes all but the group)"
    fi
}

if [ "$UNINSTALL" -eq 1 ]; then
    do_uninstall
else
    do_install
fi
