# Sourced by scripts/test.sh: the Debian packages the tests use, installed when missing.
# sshfs tier: openssh-server sshfs fuse3; clock-skew tier: faketime (libfaketime).
# report tier: chromium (headless).
# Without root or apt-get nothing is installed and those tests skip with their reason.
need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v sshfs >/dev/null || need+=(sshfs)
command -v fusermount3 >/dev/null || need+=(fuse3)
ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || need+=(faketime)
command -v chromium >/dev/null || need+=(chromium)  # tests/test_report.py: the HTML report in a real browser
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian packages: ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"; } >/tmp/exec-apt.log 2>&1 ||
      { cat /tmp/exec-apt.log >&2; echo "apt-get install failed" >&2; exit 1; }
  else
    echo "not installing ${need[*]} (needs root and apt-get): those tests will skip" >&2
  fi
fi
