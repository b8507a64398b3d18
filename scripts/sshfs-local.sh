#!/usr/bin/env bash
# Two sshfs mounts of one directory over loopback: a real network filesystem for the tests.
#   scripts/sshfs-local.sh start [DIR]   prints: export EXEC_SSHFS_DIR=DIR  (mounts: DIR/mnt1 DIR/mnt2)
#   scripts/sshfs-local.sh stop DIR
# sshd listens on 127.0.0.1 on a free high port, with host and user keys made in DIR.
# The mounts use sshfs's default caching (dir and attribute caches of about 20 s).
# Needs the Debian packages openssh-server sshfs fuse3, /dev/fuse, and root (or a user
# that may mount FUSE filesystems and log in over ssh).
set -euo pipefail

start() {
  local dir=${1:-$(mktemp -d /tmp/exec-sshfs.XXXXXX)}
  mkdir -p "$dir"/{shared,mnt1,mnt2}
  chmod 700 "$dir"
  ssh-keygen -q -t ed25519 -N '' -f "$dir/host_key" <<<y >/dev/null
  ssh-keygen -q -t ed25519 -N '' -f "$dir/user_key" <<<y >/dev/null
  cp "$dir/user_key.pub" "$dir/authorized_keys"
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  cat > "$dir/sshd_config" <<CONF
Port $port
ListenAddress 127.0.0.1
HostKey $dir/host_key
AuthorizedKeysFile $dir/authorized_keys
PidFile $dir/sshd.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
StrictModes no
UsePAM no
Subsystem sftp internal-sftp
CONF
  mkdir -p /run/sshd
  "$(command -v sshd || echo /usr/sbin/sshd)" -f "$dir/sshd_config" -E "$dir/sshd.log"
  local opts="port=$port,IdentityFile=$dir/user_key,StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,LogLevel=ERROR,BatchMode=yes"
  for m in mnt1 mnt2; do
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      sshfs -o "$opts" "$(id -un)@127.0.0.1:$dir/shared" "$dir/$m" 2>>"$dir/sshfs.log" && break
      sleep 0.3
    done
    mountpoint -q "$dir/$m" || { cat "$dir/sshfs.log" "$dir/sshd.log" >&2; echo "sshfs mount $m failed" >&2; exit 1; }
  done
  echo "export EXEC_SSHFS_DIR=$dir"
}

stop() {
  local dir=$1
  for m in mnt1 mnt2; do
    fusermount3 -u "$dir/$m" 2>/dev/null || umount -l "$dir/$m" 2>/dev/null || true
  done
  [ -f "$dir/sshd.pid" ] && kill "$(cat "$dir/sshd.pid")" 2>/dev/null || true
}

case "${1:-}" in
  start) start "${2:-}" ;;
  stop) stop "${2:?usage: $0 stop DIR}" ;;
  *) echo "usage: $0 start [DIR] | stop DIR" >&2; exit 2 ;;
esac
