#!/usr/bin/env bash
# run-cluster-bench.sh: herald's cluster scale (issue 4), on loopback, without make.
#
# Starts its own redis-server (127.0.0.1:REDIS_PORT, --save '' --appendonly no)
# and herald nodes in cluster mode (--redis, one --node-name each), and runs:
#
#   1. game: the Instamrkt study's benchmark with GAME_USERS users spread over
#      GAME_NODES nodes (herald-bench --server once per node), the load generator
#      in GAME_PROCS processes; one run per time scale in GAME_SCALES. Users
#      arrive at 120/s (the study's rate) / scale; a scale of 1 is the study's
#      own timing (200 s ramp-up), 0.5 doubles every rate. The bench publishes
#      the broadcasts (every game channel every 3 s x scale) through every node.
#   2. fan-out throughput with 1, 2 and 4 nodes (FAN_NODES): the same channel set
#      and the same total subscribers, spread so that every channel has
#      subscribers on every node; publishes flat out through every node;
#      FAN_REPS runs each (medians). Plus one single-node in-memory run (no
#      Redis) for reference. Redis's CPU is sampled apart (--redis-pid):
#      Redis CPU per published message.
#
# Everything goes to bench/results/cluster-<date>/: <run>.txt (table and command
# line), .json, .csv, plots/, node and Redis logs, env.txt, summary.txt (the
# tables for docs/scale.md). A node that dies is reported (crashes.txt keeps
# its log tail) and the remaining runs go on with fresh nodes.
#
# Sizes (environment):
#   GAME_USERS=24000 GAME_NODES=2 GAME_PROCS=4 GAME_CHANNELS=10 GAME_SCALES="1 0.5 0.25"
#   GAME_SECONDS=120 (steady phase after the last user joined, seconds)
#   GAME_RATE (users arriving per second; default 120 / scale, the study's)
#   GAME_ARGS (more herald-bench options, e.g. "--game-updates 10 --batch-ms 3000")
#   GAME_TAG (appended to the game runs' names, e.g. "-window": conflation-bench.sh)
#   FAN_NODES="1 2 4" FAN_CONNS=8000 FAN_CHANNELS=8 FAN_MESSAGES=2000 FAN_PUBLISHERS=4 FAN_REPS=2
#   PAYLOAD=100 NODE_WORKERS=1 (herald --workers per node) REDIS_PORT=16379 BASE_PORT=18280
#   CLUSTER_RUNS="game fanout"  BUILD=build  REDIS_IDLE_SECONDS=5
#   CLUSTER_OUT=<dir>  write into an existing results directory (e.g. rerun only the fan-out;
#                      CLUSTER_RUNS= with CLUSTER_OUT only rewrites its summary)
set -u
cd "$(dirname "$0")/../.."
ROOT=$PWD
BUILD=${BUILD:-build}
GAME_USERS=${GAME_USERS:-24000}; GAME_NODES=${GAME_NODES:-2}; GAME_PROCS=${GAME_PROCS:-4}
GAME_CHANNELS=${GAME_CHANNELS:-10}; GAME_SCALES=${GAME_SCALES:-1 0.5 0.25}; GAME_SECONDS=${GAME_SECONDS:-120}
GAME_RATE=${GAME_RATE:-}; GAME_ARGS=${GAME_ARGS:-}; GAME_TAG=${GAME_TAG:-}
FAN_NODES=${FAN_NODES:-1 2 4}; FAN_CONNS=${FAN_CONNS:-8000}; FAN_CHANNELS=${FAN_CHANNELS:-8}
FAN_MESSAGES=${FAN_MESSAGES:-2000}; FAN_PUBLISHERS=${FAN_PUBLISHERS:-4}; FAN_REPS=${FAN_REPS:-2}
PAYLOAD=${PAYLOAD:-100}; NODE_WORKERS=${NODE_WORKERS:-1}
REDIS_PORT=${REDIS_PORT:-16379}; BASE_PORT=${BASE_PORT:-18280}
CLUSTER_RUNS=${CLUSTER_RUNS-game fanout}
REDIS_IDLE_SECONDS=${REDIS_IDLE_SECONDS:-5}

for b in herald herald-bench; do
	[ -x "$ROOT/$BUILD/$b" ] || { echo "run-cluster-bench: $BUILD/$b missing (make all)" >&2; exit 1; }
done
command -v redis-server >/dev/null || { echo "run-cluster-bench: redis-server not installed" >&2; exit 1; }
OUT=${CLUSTER_OUT:-$ROOT/bench/results/cluster-$(date +%Y-%m-%d-%H%M%S)}
mkdir -p "$OUT/plots"
TMP=$(mktemp -d /tmp/herald-cluster.XXXXXX)
cp "$ROOT/$BUILD/herald" "$ROOT/$BUILD/herald-bench" "$TMP/" # a rebuild cannot swap them mid-run
HERALD=$TMP/herald
BENCH=$TMP/herald-bench
LOG=$OUT/bench.log
REDIS_PID=""
NODE_PIDS=()
NODE_ADDRS=()

log() { echo "run-cluster-bench: $*" | tee -a "$LOG" >&2; }

wait_port() { # wait_port PORT PID
	for _ in $(seq 50); do
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		kill -0 "$2" 2>/dev/null || return 1
		sleep 0.1
	done
	return 1
}

stop_pid() {
	kill -TERM "$1" 2>/dev/null
	for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
	kill -KILL "$1" 2>/dev/null
	wait "$1" 2>/dev/null
}

start_redis() {
	redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$TMP" \
		--daemonize no >>"$OUT/redis.log" 2>&1 &
	REDIS_PID=$!
	wait_port "$REDIS_PORT" "$REDIS_PID" || { log "redis-server failed to start (see redis.log)"; exit 1; }
}
stop_redis() { [ -n "$REDIS_PID" ] && stop_pid "$REDIS_PID"; REDIS_PID=""; }

# start_nodes N [memory]: N herald nodes on BASE_PORT.. (cluster mode unless "memory")
start_nodes() {
	local n=$1 mode=${2:-redis} i port
	NODE_PIDS=()
	NODE_ADDRS=()
	for i in $(seq "$n"); do
		port=$((BASE_PORT + i))
		local args=(--listen "127.0.0.1:$port" --workers "$NODE_WORKERS" --node-name "n$i")
		[ "$mode" = redis ] && args+=(--redis "redis://127.0.0.1:$REDIS_PORT")
		echo "== $(date -Is) start: herald ${args[*]}" >>"$OUT/node-n$i.log"
		"$HERALD" "${args[@]}" >>"$OUT/node-n$i.log" 2>&1 &
		NODE_PIDS+=($!)
		NODE_ADDRS+=("127.0.0.1:$port")
		wait_port "$port" $! || { log "node n$i failed to start (see node-n$i.log)"; return 1; }
	done
	sleep 0.5 # Redis links up
}
stop_nodes() {
	local p
	for p in "${NODE_PIDS[@]}"; do stop_pid "$p"; done
	NODE_PIDS=()
}
cleanup() { stop_nodes; stop_redis; rm -rf "$TMP"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# A node that died during a run: status and log tail to crashes.txt.
check_nodes() {
	local i=0 p rc
	for p in "${NODE_PIDS[@]}"; do
		i=$((i + 1))
		if ! kill -0 "$p" 2>/dev/null; then
			wait "$p" 2>/dev/null
			rc=$?
			log "node n$i EXITED during '$1' (status $rc$([ $rc -gt 128 ] && echo ", signal $((rc - 128))")): this run's figures are void"
			{
				echo "== $(date -Is) node n$i exited during '$1' (status $rc)"
				tail -n 50 "$OUT/node-n$i.log"
			} >>"$OUT/crashes.txt"
			echo "NODE n$i EXITED during this run (status $rc)" >>"$OUT/$1.txt"
		fi
	done
	if [ -n "$REDIS_PID" ] && ! kill -0 "$REDIS_PID" 2>/dev/null; then
		log "redis-server EXITED during '$1'"
		echo "== $(date -Is) redis-server exited during '$1'" >>"$OUT/crashes.txt"
	fi
}

# Redis's CPU seconds so far (all threads, schedstat ns).
redis_cpu() { awk '{ s += $1 } END { printf "%.6f", s / 1e9 }' /proc/"$REDIS_PID"/task/*/schedstat 2>/dev/null; }

# redis_idle NAME: Redis's CPU with the nodes connected and no load (its cron
# and the nodes' heartbeats), in % of a core, to NAME.redis-idle; the summary
# takes it off the per-publish figure.
redis_idle() {
	[ -n "$REDIS_PID" ] && [ "$REDIS_IDLE_SECONDS" != 0 ] || return 0
	local a b
	a=$(redis_cpu)
	sleep "$REDIS_IDLE_SECONDS"
	b=$(redis_cpu)
	awk -v a="$a" -v b="$b" -v s="$REDIS_IDLE_SECONDS" 'BEGIN { printf "%.4f\n", 100 * (b - a) / s }' >"$OUT/$1.redis-idle"
}

# bench NAME SCENARIO [options]: one herald-bench run against every node.
bench() {
	local name=$1 sc=$2 a p srv=() pids=()
	shift 2
	for a in "${NODE_ADDRS[@]}"; do srv+=(--server "$a"); done
	for p in "${NODE_PIDS[@]}"; do pids+=(--server-pid "$p"); done
	[ -n "$REDIS_PID" ] && pids+=(--redis-pid "$REDIS_PID")
	redis_idle "$name"
	log "$name"
	echo "\$ herald-bench $sc --target herald ${srv[*]} $*" >"$OUT/$name.txt"
	"$BENCH" "$sc" --target herald "${srv[@]}" "${pids[@]}" --label "$name" --json "$OUT/$name.json" \
		--csv "$OUT/$name.csv" --plot "$OUT/plots" --quiet "$@" 2>>"$LOG" | tee -a "$OUT/$name.txt"
	check_nodes "$name"
}

[ -n "$CLUSTER_RUNS" ] && {
	echo "date: $(date -Is) (runs: $CLUSTER_RUNS)"
	echo "host: $(uname -srm), $(nproc) cores, $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo)"
	echo "git: $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- src 2>/dev/null || echo " + uncommitted changes in src/")"
	echo "redis: $(redis-server --version)"
	echo "nodes: herald --workers $NODE_WORKERS --redis redis://127.0.0.1:$REDIS_PORT --node-name nI, ports $((BASE_PORT + 1))..."
} >>"$OUT/env.txt"
log "results in $OUT"

for run in $CLUSTER_RUNS; do
	case $run in
	game)
		for s in $GAME_SCALES; do
			start_redis
			start_nodes "$GAME_NODES" || { stop_nodes; stop_redis; continue; }
			rate=${GAME_RATE:-$(awk -v s="$s" 'BEGIN { printf "%g", 120 / s }')}
			# shellcheck disable=SC2086 # GAME_ARGS is a list of options
			bench "game-$GAME_USERS-x$s$GAME_TAG" game --conns "$GAME_USERS" --procs "$GAME_PROCS" --channels "$GAME_CHANNELS" \
				--connect-rate "$rate" --time-scale "$s" --duration "$GAME_SECONDS" --publishers "$GAME_NODES" \
				--payload "$PAYLOAD" $GAME_ARGS
			stop_nodes
			stop_redis
		done ;;
	fanout)
		for n in $FAN_NODES memory; do
			for r in $(seq "$FAN_REPS"); do
				if [ "$n" = memory ]; then
					start_nodes 1 memory || continue
					name=fanout-memory-1node
				else
					start_redis
					start_nodes "$n" || { stop_nodes; stop_redis; continue; }
					name=fanout-${n}node
				fi
				[ "$r" -gt 1 ] && name=$name-r$r
				bench "$name" fanout --transport ws --conns "$FAN_CONNS" --channels "$FAN_CHANNELS" \
					--messages "$FAN_MESSAGES" --rate 0 --publishers "$FAN_PUBLISHERS" --payload "$PAYLOAD"
				stop_nodes
				stop_redis
			done
		done ;;
	esac
done

python3 - "$OUT" <<'EOF' | tee "$OUT/summary.txt"
import glob, json, os, re, statistics, sys
D = sys.argv[1]

def load(p):
    try:
        return json.load(open(p))["runs"][0]
    except (OSError, ValueError, KeyError, IndexError):
        return None

def g(r, *path):
    for k in path:
        if not isinstance(r, dict) or k not in r:
            return None
        r = r[k]
    return r

def redis_net_us(r, name):
    """Redis CPU per publish minus its idle rate (measured before the run)."""
    try:
        idle = float(open(os.path.join(D, name + ".redis-idle")).read())
    except (OSError, ValueError):
        return None
    cpu, win, pubs = g(r, "redis", "cpu_window_s"), g(r, "delivery", "window_s"), g(r, "redis", "publishes")
    if not cpu or not win or not pubs:
        return None
    return max(0.0, cpu - idle / 100 * win) * 1e6 / pubs

print(f"herald cluster scale: {D}\n")
study = {"handshake": (671, 4152, None), "request": (291, 2631, None), "broadcast": (302, 905, 17900)}
for p in sorted(glob.glob(os.path.join(D, "game-*.json"))):
    r = load(p)
    if not r:
        continue
    c, pr = r["counters"], r["params"]
    print(f"game, {pr['conns']:,} users on {pr.get('servers', '?')} nodes, time scale {pr['time_scale']:g} "
          f"(users arrive at {pr['connect_rate']:g}/s, broadcast every {3 * pr['time_scale']:g} s per game, "
          f"{pr['channels']} games), steady phase {pr['duration']:g} s; {os.path.basename(p)}")
    print(f"  connected {c['connected']:,}, failed {c['failed']}, disconnected {c['disconnected']}, "
          f"resumed after a server close {c['reconnects']:,} (failed attempts {c['reconnect_fails']}, gap events {c['gap_events']})")
    d = r["delivery"]
    print(f"  broadcasts: expected {d['expected']:,}, delivered {d['delivered']:,}, lost {d['lost']}, extra {d['extra']}; "
          f"requests {c['requests']:,}, answered {c['responses']:,}")
    print(f"  {'latency (ms)':28s} {'mean':>9s} {'p50':>9s} {'p98':>9s} {'p99':>9s} {'max':>9s} {'samples':>10s}   study: mean / p98 / max")
    for key, name in [("handshake", "handshake"), ("request", "request (steady)"), ("request (ramp-up)", "request (ramp-up)"),
                      ("broadcast", "broadcast (steady)"), ("broadcast (ramp-up)", "broadcast (ramp-up)"),
                      ("reconnect", "reconnect (resume)"), ("publish", "publish (bench -> node)")]:
        h = g(r, "latency", key)
        if not isinstance(h, dict):
            continue
        pc = h["percentiles_ms"]
        base = study.get(key.split(" ")[0]) if "ramp" not in key else None
        st = "" if not base else f"   {base[0]:,} / {base[1]:,} / {'-' if base[2] is None else f'{base[2]:,}'}"
        print(f"  {name:28s} {h['mean_ms']:9.2f} {pc['50']:9.2f} {pc['98']:9.2f} {pc['99']:9.2f} {h['max_ms']:9.2f} {h['count']:10,}{st}")
    s = r.get("server", {})
    red = r.get("redis", {})
    print(f"  nodes: {s.get('cpu_pct', 0):.1f}% of a core (all nodes) in the steady window, RSS max {s.get('rss_max_kb', 0) / 1024:.1f} MB (all nodes); "
          f"Redis {red.get('cpu_pct', 0):.1f}% of a core, {red.get('cpu_per_publish_us', 0):.0f} us per publish\n")

rows = {}
for p in glob.glob(os.path.join(D, "fanout-*.json")):
    m = re.match(r"fanout-(memory-1|\d+)node(-r\d+)?\.json$", os.path.basename(p))
    r = load(p)
    if m and r:
        r["_redis_net_us"] = redis_net_us(r, os.path.basename(p)[:-5])
        rows.setdefault(m.group(1), []).append(r)

def med(rs, *path):
    v = [g(r, *path) for r in rs]
    v = [x for x in v if isinstance(x, (int, float))]
    return statistics.median(v) if v else None

if rows:
    any_r = next(iter(rows.values()))[0]["params"]
    print(f"fan-out throughput: {any_r['conns']:,} WS subscribers on {any_r['channels']} channels (every channel on every node), "
          f"{any_r['messages']:,} messages of {any_r['payload']} B flat out, {any_r['publishers']} publishers spread over the nodes; "
          f"medians of {max(len(v) for v in rows.values())} runs")
    print(f"  {'nodes':>12s} {'deliveries/s':>13s} {'vs 1 node':>10s} {'node CPU %':>11s} {'deliv/CPU-s':>12s} {'vs 1 node':>10s} "
          f"{'publishes/s':>12s} {'Redis CPU %':>12s} {'Redis us/pub':>13s} {'net of idle':>12s} {'lost':>6s}")
    base = med(rows.get("1", []), "delivery", "deliveries_per_s")
    base_eff = med(rows.get("1", []), "server", "deliveries_per_cpu_s")
    for k in sorted(rows, key=lambda x: (x.startswith("memory"), int(x) if x.isdigit() else 0)):
        rs = rows[k]
        dps = med(rs, "delivery", "deliveries_per_s")
        pubs = med(rs, "publish", "ok")
        win = med(rs, "delivery", "window_s")
        lost = sum(g(r, "delivery", "lost") or 0 for r in rs)
        name = "1 (no Redis)" if k.startswith("memory") else k
        sc = f"{dps / base:.2f}x" if base and dps else "-"
        rc = med(rs, "redis", "cpu_pct")
        ru = med(rs, "redis", "cpu_per_publish_us")
        eff = med(rs, "server", "deliveries_per_cpu_s")
        se = f"{eff / base_eff:.2f}x" if eff and base_eff else "-"
        rn = med(rs, "_redis_net_us")
        print(f"  {name:>12s} {dps or 0:13,.0f} {sc:>10s} {med(rs, 'server', 'cpu_pct') or 0:11.1f} "
              f"{eff or 0:12,.0f} {se:>10s} {(pubs / win if pubs and win else 0):12,.0f} "
              f"{'-' if rc is None else f'{rc:.1f}':>12s} {'-' if ru is None else f'{ru:.1f}':>13s} "
              f"{'-' if rn is None else f'{rn:.1f}':>12s} {lost:6d}")
    print("  (node CPU % = all nodes together, in % of one core; deliv/CPU-s = deliveries per node CPU-second;"
          " 'net of idle' = Redis CPU per publish minus Redis's idle rate measured before the run)")
if os.path.exists(os.path.join(D, "crashes.txt")):
    print("\nNODE CRASHES during this run: see crashes.txt")
EOF
log "done: $OUT"
