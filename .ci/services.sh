#!/usr/bin/env bash
# Make sure the services the test suite talks to are up and answering: RabbitMQ on 127.0.0.1:5672.
# Postgres comes from the pip-installed pgserver, so nothing is needed for it here.
# The local sandbox needs bubblewrap (namespaces) and util-linux's setpriv; they are installed too,
# with shellcheck, which the review agent runs on changed shell files,
# and so is Debian's chromium, the browser the console's tests drive (Playwright's own download is never used).
# The cgroup v2 tests boot a Debian kernel in qemu: qemu and busybox-static are installed, the kernel
# package is unpacked under .devart/vm/kernel (never installed on this host).
# "Up" means the broker completes an AMQP handshake, not just that its port is open: a broker that
# accepts TCP but never answers is restarted. Its management plugin is enabled: the reaper counts
# queue messages, ready and unacknowledged, through its HTTP API on 127.0.0.1:15672.
set -euo pipefail

amqp_answers() {
  # Send the AMQP 0-9-1 protocol header and expect a Connection.Start frame (type 1) back.
  timeout 10 python3 - <<'PY'
import socket, sys
try:
    with socket.create_connection(("127.0.0.1", 5672), timeout=5) as sock:
        sock.settimeout(5)
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        frame = sock.recv(7)
except OSError:
    sys.exit(1)
sys.exit(0 if frame[:1] == b"\x01" else 1)
PY
}

start_broker() {
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server
    else
      echo "RabbitMQ is not answering on 127.0.0.1:5672 and rabbitmq-server is not installed" >&2; exit 1
    fi
  fi
  rabbitmq-server -detached || true
  for _ in $(seq 1 90); do amqp_answers && return 0; sleep 1; done
  echo "RabbitMQ did not come up on 127.0.0.1:5672" >&2; exit 1
}

install_sandbox_tools() {
  command -v bwrap >/dev/null 2>&1 && command -v setpriv >/dev/null 2>&1 && command -v shellcheck >/dev/null 2>&1 \
    && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap util-linux shellcheck
  else
    echo "the local sandbox needs bubblewrap and setpriv, the review agent shellcheck:" \
      "install them (Debian: apt-get install bubblewrap shellcheck)" >&2
    exit 1
  fi
}

install_browser() {
  command -v chromium >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
  else
    echo "the console's browser tests need Debian's chromium at /usr/bin/chromium: apt-get install chromium" >&2
    exit 1
  fi
}

install_vm() {
  if ! command -v qemu-system-x86_64 >/dev/null 2>&1 || ! dpkg -s busybox-static >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        qemu-system-x86 busybox-static
    else
      echo "the cgroup v2 tests need qemu and a static busybox: apt-get install qemu-system-x86 busybox-static" >&2
      exit 1
    fi
  fi
  # The kernel the linux-image-amd64 metapackage names today; a newer one replaces the cached one.
  local package dir=.devart/vm/kernel
  package=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ {print $2; exit}')
  if [ -z "$package" ]; then
    [ -f "$dir/unpacked" ] && return 0
    echo "cannot tell which kernel package to fetch for the cgroup v2 tests (apt-cache depends linux-image-amd64)" >&2
    exit 1
  fi
  [ "$(cat "$dir/unpacked" 2>/dev/null)" = "$package" ] && return 0
  local download
  download=$(mktemp -d)
  chown _apt "$download" 2>/dev/null || true  # apt downloads as its sandbox user where it can
  (cd "$download" && apt-get download -qq "$package")
  rm -rf "$dir" && mkdir -p "$dir"
  dpkg -x "$download"/"$package"_*.deb "$dir"
  rm -rf "$download"
  echo "$package" > "$dir/unpacked"
}

enable_management() {
  rabbitmq-plugins -q is_enabled rabbitmq_management >/dev/null 2>&1 || rabbitmq-plugins -q enable rabbitmq_management
  for _ in $(seq 1 60); do (exec 3<>/dev/tcp/127.0.0.1/15672) 2>/dev/null && return 0; sleep 1; done
  echo "RabbitMQ's management API did not come up on 127.0.0.1:15672" >&2; exit 1
}

install_sandbox_tools
install_browser
install_vm
if ! amqp_answers; then
  if (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
    echo "RabbitMQ accepts connections but does not answer; restarting it" >&2
    timeout 30 rabbitmqctl -q stop >/dev/null 2>&1 || pkill -9 -f 'beam.smp.*-sname rabbit@' || true
    for _ in $(seq 1 30); do (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null || break; sleep 1; done
  fi
  start_broker
fi
enable_management
