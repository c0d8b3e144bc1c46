#!/usr/bin/env bash
# The main job, end to end: a server on the embedded SQLite store, two agents,
# a pushed manifest, an out-of-band change detected and repaired, and the
# drift and compliance reports. Everything lives in one temporary directory
# (each agent manages files under its own sandbox root, never the real /etc),
# and everything started here is stopped on exit.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
bin="$repo/.venv/bin"
# Demo agents take their settings from flags only, never from this machine's
# /etc/plumb/agent.toml.
export PLUMB_AGENT_CONFIG=/dev/null
work=$(mktemp -d "${TMPDIR:-/tmp}/plumb-demo.XXXXXX")
pids=()
started_ms=$(( $(date +%s%N) / 1000000 ))

cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

# wait_until SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds.
wait_until() {
  local deadline=$(( $(date +%s) + $1 )) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "demo: timed out waiting for $what; logs are in $work" >&2; KEEP=1; exit 1
    fi
    sleep 0.2
  done
}

step "Initialise a server in $work/server (CA, certificates, SQLite store)"
show "$bin/plumb-server" --data-dir "$work/server" init \
  --san localhost --san 127.0.0.1 --listen 127.0.0.1:0 --enroll-listen 127.0.0.1:0
"$bin/plumb-server" --data-dir "$work/server" run >"$work/server.out" 2>"$work/server.log" &
pids+=($!)
wait_until 20 "the server to listen" grep -q listening "$work/server.out"
cat "$work/server.out"
agent_addr=$(sed -n 's/.*agents=localhost:\([0-9]*\).*/127.0.0.1:\1/p' "$work/server.out")
enroll_addr=$(sed -n 's/.*enroll=localhost:\([0-9]*\).*/127.0.0.1:\1/p' "$work/server.out")
export PLUMB_CONFIG="$work/server/operator/cli.toml" PLUMB_SERVER="$agent_addr"

step "Create an enrollment token for two web nodes, bound to their names"
# The token goes to the agents in a file only its owner can read, never on a
# command line (which every user of a host can read in /proc).
(umask 077 && "$bin/plumb" token create --labels role=web env=demo --names web-1,web-2 \
  --uses 2 --ttl 600 >"$work/token")
show "$bin/plumb" token list

step "Enroll two agents and start their daemons (watchers on; periodic run every 5s as a catch-all)"
for node in web-1 web-2; do
  mkdir -p "$work/$node/root/etc"
  echo "old setting" >"$work/$node/root/etc/legacy.conf"
  show "$bin/plumb-agent" --state-dir "$work/$node/state" enroll \
    --server "$enroll_addr" --token-file "$work/token" --name "$node"
  "$bin/plumb-agent" --state-dir "$work/$node/state" daemon --root "$work/$node/root" \
    --interval 5 --splay 1 >"$work/$node.log" 2>&1 &
  pids+=($!)
done
connected() { [ "$("$bin/plumb" nodes --json | grep -c '"connected": true')" = 2 ]; }
wait_until 20 "both agents to connect" connected
show "$bin/plumb" nodes

step "Push the example manifest; connected agents apply it at once"
show "$bin/plumb" push "$repo/examples/web.yaml"
converged() { "$bin/plumb" compliance >/dev/null && [ "$("$bin/plumb" nodes --json | grep -c "\"applied_revision\": 1,")" = 2 ]; }
wait_until 20 "both nodes to converge" converged
show "$bin/plumb" nodes
show "$bin/plumb" report web-1
show cat "$work/web-1/root/etc/app.conf"

step "Out-of-band change on web-2: someone edits /etc/app.conf by hand"
echo "listen = 0.0.0.0:9999   # quick fix, do not tell anyone" >"$work/web-2/root/etc/app.conf"
chmod 0644 "$work/web-2/root/etc/app.conf"
show cat "$work/web-2/root/etc/app.conf"

step "The agent's watcher notices the change, repairs it and reports the drift"
drift_seen() { "$bin/plumb" drift --json | grep -q "\"node\": \"web-2\""; }
wait_until 30 "the drift to be repaired and reported" drift_seen
show cat "$work/web-2/root/etc/app.conf"
show "$bin/plumb" report web-2

step "Drift report (fleet-wide) and compliance report"
show "$bin/plumb" drift
show "$bin/plumb" compliance
show "$bin/plumb-agent" --state-dir "$work/web-2/state" status

elapsed_ms=$(( $(date +%s%N) / 1000000 - started_ms ))
printf '\ndemo finished in %d.%03ds; stopping the server and agents\n' \
  $((elapsed_ms / 1000)) $((elapsed_ms % 1000))
