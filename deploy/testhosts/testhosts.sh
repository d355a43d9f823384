#!/bin/bash
# testhosts.sh -- booted Debian "hosts" for end-to-end deployment tests.
#
# Each host is a systemd-nspawn container running systemd as PID 1, booted from an overlayfs
# copy of one cached debootstrap rootfs, attached to the bridge ccbr0 (10.77.0.0/24; the
# control node is 10.77.0.1, host hN is 10.77.0.(10+N); see Environment to change them).
# Ansible reaches the hosts over real SSH as the sudo-capable user "claude" (the seed's
# ansible_user) or as root. The hosts have no route out: apt goes through an apt-cacher-ng
# proxy on 10.77.0.1:3142, PyPI is replaced by a wheelhouse built on the control node.
#
# Usage (as root):
#   testhosts.sh prepare            install the host tools if missing, build/cached the rootfs
#   testhosts.sh up h1 h2 ...       create the bridge + apt proxy, boot the named hosts
#   testhosts.sh stop hN            shut one host down (its disk state is kept)
#   testhosts.sh wipe hN            shut one host down and drop its disk state: the next
#                                   "up hN" boots a fresh host (same name and address)
#   testhosts.sh ssh hN [cmd...]    run a command on a host as root
#   testhosts.sh down               stop every host, remove overlays, bridge, proxy, cgroups
#   testhosts.sh key                print the path of the SSH private key
#
# Environment:
#   TESTHOSTS_CACHE  cached rootfs + apt cache, kept between runs
#                    (default /var/cache/claude-cluster-testhosts)
#   TESTHOSTS_WORK   per-run state: overlays, pids, logs (default /var/tmp/claude-cluster-testhosts)
#   TESTHOSTS_BRIDGE the bridge the hosts are attached to (default ccbr0)
#   TESTHOSTS_NET    the bridge's /24 as its first three octets (default 10.77.0)
#   TESTHOSTS_PREFIX prefix of the hosts' machine names, so that the host-side veth links
#                    (vb-<prefix>hN) do not clash (default: none; at most 4 characters)
#   DOCKER_HOSTS     hosts that must be able to run dockerd (default: none)
#
# Two sets of hosts can run side by side when each has its own TESTHOSTS_WORK, _BRIDGE, _NET
# and _PREFIX, e.g. TESTHOSTS_WORK=/var/tmp/th2 TESTHOSTS_BRIDGE=ccbr1 TESTHOSTS_NET=10.78.0
# TESTHOSTS_PREFIX=b testhosts.sh up h1. They share the cached rootfs, key and apt cache.
set -euo pipefail

CACHE=${TESTHOSTS_CACHE:-/var/cache/claude-cluster-testhosts}
W=${TESTHOSTS_WORK:-/var/tmp/claude-cluster-testhosts}
BR=${TESTHOSTS_BRIDGE:-ccbr0}
NET=${TESTHOSTS_NET:-10.77.0}
PREFIX=${TESTHOSTS_PREFIX:-}
[[ $NET =~ ^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$ ]] || { echo "bad TESTHOSTS_NET: $NET (expected three octets, e.g. 10.77.0)" >&2; exit 2; }
[[ $BR =~ ^[A-Za-z0-9_-]{1,15}$ ]] || { echo "bad TESTHOSTS_BRIDGE: $BR (an interface name)" >&2; exit 2; }
[[ $PREFIX =~ ^[a-z0-9]{0,4}$ ]] || { echo "bad TESTHOSTS_PREFIX: $PREFIX (at most 4 of a-z0-9)" >&2; exit 2; }
DOCKER_HOSTS=${DOCKER_HOSTS:-}
# Bump when the package list or the image setup below changes: a new rootfs is then built.
IMAGE_VERSION=2
INCLUDE=systemd,systemd-sysv,dbus,openssh-server,python3,python3-apt,sudo,iproute2,ifupdown,ca-certificates,curl,git
BASE=$CACHE/base-v$IMAGE_VERSION
KEY=$CACHE/id_ed25519

usage() {
    sed -n '/^# Usage/,/^# Environment/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

mirror() {
    # The configured Debian mirror; apt-cacher-ng's own default backend may not be reachable.
    local m=""
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
        m=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    elif [[ -f /etc/apt/sources.list ]]; then
        m=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list)
    fi
    echo "${m:-http://deb.debian.org/debian}"
}

host_ip() {
    local n=${1#h}
    [[ $n =~ ^[0-9]+$ ]] || { echo "bad host name: $1 (expected hN)" >&2; exit 2; }
    echo "$NET.$((10 + n))"
}

ssh_opts() {
    echo "-i $KEY -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR -o ConnectTimeout=2"
}

prepare() {
    [[ $EUID -eq 0 ]] || { echo "testhosts.sh must run as root" >&2; exit 1; }
    local missing=()
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
    [[ -x /usr/sbin/apt-cacher-ng ]] || missing+=(apt-cacher-ng)
    command -v ssh >/dev/null || missing+=(openssh-client)
    if ((${#missing[@]})); then
        # policy-rc.d keeps apt from starting apt-cacher-ng as a system daemon.
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
        rm -f /usr/sbin/policy-rc.d
    fi
    mkdir -p "$CACHE"
    [[ -f $KEY ]] || ssh-keygen -q -t ed25519 -N '' -C claude-cluster-testhosts -f "$KEY"
    if [[ ! -x $BASE/usr/bin/python3 ]]; then
        local tmp=$CACHE/base.tmp.$$
        rm -rf "$tmp"
        echo "building the host rootfs in $BASE (about a minute, cached afterwards)" >&2
        debootstrap --variant=minbase --include=$INCLUDE bookworm "$tmp" "$(mirror)" >"$CACHE/debootstrap.log" 2>&1
        rm -f "$tmp"/var/cache/apt/archives/*.deb
        # The seed's ansible_user: a sudo-capable "claude" account (keys are added per host).
        chroot "$tmp" useradd --create-home --shell /bin/bash claude
        echo 'claude ALL=(ALL) NOPASSWD:ALL' >"$tmp/etc/sudoers.d/claude"
        chmod 0440 "$tmp/etc/sudoers.d/claude"
        rm -f "$tmp"/etc/ssh/ssh_host_*
        mv "$tmp" "$BASE"
    fi
}

start_proxy() {
    mkdir -p "$W/acng" "$CACHE/acng-cache"
    if [[ -f $W/acng.pid ]] && kill -0 "$(cat "$W/acng.pid")" 2>/dev/null; then return; fi
    rm -rf "$W/acng/conf"
    cp -a /etc/apt-cacher-ng "$W/acng/conf"
    echo "$(mirror)/" >"$W/acng/conf/backends_debian"
    /usr/sbin/apt-cacher-ng -c "$W/acng/conf" ForeGround=1 BindAddress="$NET.1" Port=3142 \
        CacheDir="$CACHE/acng-cache" LogDir="$W/acng" PidFile="$W/acng/acng.pidfile" \
        </dev/null >"$W/acng/out.log" 2>&1 &
    echo $! >"$W/acng.pid"
}

network() {
    if ! ip link show "$BR" >/dev/null 2>&1; then
        ip link add "$BR" type bridge
        ip addr add "$NET.1/24" dev "$BR"
        ip link set "$BR" up
    fi
    # If the control node runs a firewall (dockerd sets FORWARD to DROP), keep bridge traffic
    # flowing and stop the hosts from routing out. Without iptables there is nothing to do:
    # ip_forward stays as it is and the hosts only reach the bridge.
    if command -v iptables >/dev/null && ! iptables -C FORWARD -i "$BR" -o "$BR" -j ACCEPT 2>/dev/null; then
        iptables -I FORWARD -i "$BR" ! -o "$BR" -j DROP
        iptables -I FORWARD ! -i "$BR" -o "$BR" -j DROP
        iptables -I FORWARD -i "$BR" -o "$BR" -j ACCEPT
        touch "$W/iptables"
    fi
}

boot() {
    local h=$1 ip d R extra=()
    ip=$(host_ip "$h")
    d=$W/ov/$h
    R=$d/merged
    if [[ -f $W/$h.pid ]] && kill -0 "$(cat "$W/$h.pid")" 2>/dev/null; then return; fi
    mkdir -p "$d/upper" "$d/work" "$R"
    mountpoint -q "$R" || mount -t overlay overlay -o "lowerdir=$BASE,upperdir=$d/upper,workdir=$d/work" "$R"
    echo "$h" >"$R/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 %s\n%s.1 control\n' "$h" "$NET" >"$R/etc/hosts"
    printf 'auto host0\niface host0 inet static\n  address %s/24\n' "$ip" >"$R/etc/network/interfaces.d/host0"
    install -d -m 700 "$R/root/.ssh"
    install -m 600 "$KEY.pub" "$R/root/.ssh/authorized_keys"
    install -d -m 700 -o 1000 -g 1000 "$R/home/claude/.ssh"
    install -m 600 -o 1000 -g 1000 "$KEY.pub" "$R/home/claude/.ssh/authorized_keys"
    if ! ls "$R"/etc/ssh/ssh_host_*_key >/dev/null 2>&1; then chroot "$R" ssh-keygen -A >/dev/null; fi
    rm -f "$R/etc/apt/sources.list"
    [[ -f /etc/apt/sources.list.d/debian.sources ]] && cp /etc/apt/sources.list.d/debian.sources "$R/etc/apt/sources.list.d/"
    echo "Acquire::http::Proxy \"http://$NET.1:3142\";" >"$R/etc/apt/apt.conf.d/01proxy"
    # Throwaway hosts: dpkg need not fsync, and docs/man pages are not worth unpacking.
    printf 'force-unsafe-io\npath-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\npath-exclude /usr/share/locale/*\n' \
        >"$R/etc/dpkg/dpkg.cfg.d/01-testhosts"
    if [[ " $DOCKER_HOSTS " == *" $h "* ]]; then
        # dockerd inside nspawn: all capabilities, keyctl/bpf, ext4-backed /var/lib/docker, rw cgroups.
        mkdir -p "$W/docker-$h"
        extra=(--capability=all "--system-call-filter=add_key keyctl bpf" "--bind=$W/docker-$h:/var/lib/docker")
        # shellcheck disable=SC2016 # $m is expanded by the host's shell, not here
        printf '[Unit]\nDefaultDependencies=no\nBefore=containerd.service docker.service\nAfter=local-fs.target\n[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/sh -c "for m in /sys/fs/cgroup/*; do mount -o remount,bind,rw $m; done"\n[Install]\nWantedBy=multi-user.target\n' >"$R/etc/systemd/system/cgroup-rw.service"
        ln -sf /etc/systemd/system/cgroup-rw.service "$R/etc/systemd/system/multi-user.target.wants/cgroup-rw.service"
    fi
    systemd-nspawn -b -D "$R" --machine="$PREFIX$h" --register=no --keep-unit --network-bridge="$BR" "${extra[@]}" \
        </dev/null >"$W/$h.console.log" 2>&1 &
    echo $! >"$W/$h.pid"
}

wait_up() {
    local h=$1 ip
    ip=$(host_ip "$h")
    # shellcheck disable=SC2046
    for _ in $(seq 1 300); do
        if ssh $(ssh_opts) "root@$ip" 'systemctl is-system-running --wait' >/dev/null 2>&1; then return 0; fi
        if ! kill -0 "$(cat "$W/$h.pid")" 2>/dev/null; then
            echo "host $h died while booting; see $W/$h.console.log" >&2
            return 1
        fi
        sleep 0.2
    done
    echo "host $h did not come up; see $W/$h.console.log" >&2
    return 1
}

up() {
    (($#)) || usage
    [[ -x $BASE/usr/bin/python3 ]] || prepare
    mkdir -p "$W"
    network
    start_proxy
    local h
    for h in "$@"; do boot "$h"; done
    for h in "$@"; do wait_up "$h"; done
}

stop_host() {
    local h=$1 p
    if [[ -f $W/$h.pid ]]; then
        p=$(cat "$W/$h.pid")
        kill -TERM "$p" 2>/dev/null || true
        for _ in $(seq 1 300); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
        rm -f "$W/$h.pid"
    fi
    rm -rf "/run/systemd/nspawn/propagate/$PREFIX$h"
}

wipe_host() {
    local h=$1 R=$W/ov/$1/merged
    host_ip "$h" >/dev/null
    stop_host "$h"
    if mountpoint -q "$R"; then umount "$R" || umount -l "$R"; fi
    rm -rf "${W:?}/ov/$h" "$W/docker-$h"
}

down() {
    local pidfile h d
    if [[ -d $W ]]; then
        # Stop the hosts in parallel: each clean shutdown takes a few seconds.
        for pidfile in "$W"/h*.pid; do
            [[ -e $pidfile ]] || continue
            h=$(basename "$pidfile" .pid)
            stop_host "$h" &
        done
        wait
        for d in "$W"/ov/*/merged; do
            [[ -d $d ]] || continue
            if mountpoint -q "$d"; then umount "$d" || umount -l "$d"; fi
            rm -rf "/run/systemd/nspawn/propagate/$PREFIX$(basename "$(dirname "$d")")"
        done
        if [[ -f $W/acng.pid ]]; then
            kill "$(cat "$W/acng.pid")" 2>/dev/null || true
            rm -f "$W/acng.pid"
        fi
    fi
    if [[ -f $W/iptables ]] && command -v iptables >/dev/null; then
        iptables -D FORWARD -i "$BR" -o "$BR" -j ACCEPT 2>/dev/null || true
        iptables -D FORWARD ! -i "$BR" -o "$BR" -j DROP 2>/dev/null || true
        iptables -D FORWARD -i "$BR" ! -o "$BR" -j DROP 2>/dev/null || true
    fi
    ip link del "$BR" 2>/dev/null || true
    # Empty cgroups left by nspawn --keep-unit and by dockerd inside nspawn.
    for d in /sys/fs/cgroup/*/payload /sys/fs/cgroup/*/supervisor \
        $(find /sys/fs/cgroup -maxdepth 4 -type d -name docker 2>/dev/null); do
        if [[ -d $d ]] && [[ -z "$(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null)" ]]; then
            find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
        fi
    done
    # Per-run state goes; the cached rootfs and apt cache stay.
    rm -rf "$W"
}

cmd=${1:-}
(($#)) && shift
case $cmd in
    prepare) prepare ;;
    up) up "$@" ;;
    stop) (($# == 1)) || usage; stop_host "$1" ;;
    wipe) (($# == 1)) || usage; wipe_host "$1" ;;
    ssh)
        (($# >= 1)) || usage
        ip=$(host_ip "$1"); shift
        # shellcheck disable=SC2046
        exec ssh $(ssh_opts) "root@$ip" "$@"
        ;;
    down) down ;;
    key) echo "$KEY" ;;
    *) usage ;;
esac
