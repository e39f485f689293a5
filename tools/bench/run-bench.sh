#!/usr/bin/env bash
# make bench: herald vs Nchan vs the raw-socket floor, side by side, on loopback.
#
# Starts each server on 127.0.0.1 (fresh for every memory measurement), runs the
# same herald-bench scenarios against each, writes bench/results/<date>/ (tables,
# JSON, CSV, PNG plots) and prints the issue-3 ratios (summary.txt).
# Default run: about 10-15 minutes. Sizes come from the environment:
#
#   BENCH_TARGETS="herald nchan floor"   which servers to measure
#   IDLE_CONNS=19000 IDLE_HOLD=10        idle: connections held, seconds held (ws and sse)
#   FANOUT_CONNS=5000 FANOUT_MESSAGES=50 FANOUT_RATE=5 PAYLOAD=100
#   BURST_CONNS=2000 BURST_MESSAGES=200 BURST_SIZE=20 BURST_RATE=400
#   THRU_CONNS=5000 THRU_MESSAGES=200    flat-out fan-out (herald: 1 vs 2 workers)
#   STORM_CONNS=10000                    connection storm (no rate limit)
#   PUB_SECONDS=5 PUB_PUBLISHERS=4       publish throughput
#   GAME_USERS=2000 GAME_RATE=100 GAME_SCALE=0.1 GAME_SECONDS=20 GAME_SERIES="500 1000"
#   PVP_CLIENTS=10,100,1000 PVP_INTERVALS=10,30 PVP_PUBLISHES=3 PVP_SCALE=0.1
#   HERALD_PORT=18080 NCHAN_PORT=19200 FLOOR_PORT=19300  BUILD=build
set -u
cd "$(dirname "$0")/../.."
ROOT=$PWD
BUILD=${BUILD:-build}
BENCH=$ROOT/$BUILD/herald-bench
FLOOR=$ROOT/$BUILD/herald-floor
HERALD=$ROOT/$BUILD/herald
TARGETS=${BENCH_TARGETS:-herald nchan floor}
IDLE_CONNS=${IDLE_CONNS:-19000}; IDLE_HOLD=${IDLE_HOLD:-10}
FANOUT_CONNS=${FANOUT_CONNS:-5000}; FANOUT_MESSAGES=${FANOUT_MESSAGES:-50}; FANOUT_RATE=${FANOUT_RATE:-5}
PAYLOAD=${PAYLOAD:-100}
BURST_CONNS=${BURST_CONNS:-2000}; BURST_MESSAGES=${BURST_MESSAGES:-200}; BURST_SIZE=${BURST_SIZE:-20}
BURST_RATE=${BURST_RATE:-400}
THRU_CONNS=${THRU_CONNS:-5000}; THRU_MESSAGES=${THRU_MESSAGES:-200}
STORM_CONNS=${STORM_CONNS:-10000}
PUB_SECONDS=${PUB_SECONDS:-5}; PUB_PUBLISHERS=${PUB_PUBLISHERS:-4}
GAME_USERS=${GAME_USERS:-2000}; GAME_RATE=${GAME_RATE:-100}; GAME_SCALE=${GAME_SCALE:-0.1}
GAME_SECONDS=${GAME_SECONDS:-20}; GAME_SERIES=${GAME_SERIES:-500 1000}
PVP_CLIENTS=${PVP_CLIENTS:-10,100,1000}; PVP_INTERVALS=${PVP_INTERVALS:-10,30}
PVP_PUBLISHES=${PVP_PUBLISHES:-3}; PVP_SCALE=${PVP_SCALE:-0.1}
HERALD_PORT=${HERALD_PORT:-18080}; NCHAN_PORT=${NCHAN_PORT:-19200}; FLOOR_PORT=${FLOOR_PORT:-19300}

for b in "$BENCH" "$FLOOR"; do
	[ -x "$b" ] || { echo "run-bench: $b missing: run 'make bench-bins' first" >&2; exit 1; }
done
OUT=$ROOT/bench/results/$(date +%Y-%m-%d-%H%M%S)
mkdir -p "$OUT/plots"
TMP=$(mktemp -d /tmp/herald-bench.XXXXXX)
LOG=$OUT/bench.log
SERVER_PID=""      # process started by us (herald, floor, nginx master)
SAMPLE_PIDS=()     # --server-pid arguments
SERVER_ADDR=""

log() { echo "run-bench: $*" | tee -a "$LOG" >&2; }

stop_server() {
	if [ -n "$SERVER_PID" ]; then
		kill -TERM "$SERVER_PID" 2>/dev/null
		for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$SERVER_PID" 2>/dev/null
		wait "$SERVER_PID" 2>/dev/null
	fi
	SERVER_PID=""
	SAMPLE_PIDS=()
}
cleanup() { stop_server; rm -rf "$TMP"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() {
	for _ in $(seq 50); do
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		kill -0 "$SERVER_PID" 2>/dev/null || return 1
		sleep 0.1
	done
	return 1
}

# start_server TARGET [herald workers]
START_ARGS=()
start_server() {
	stop_server
	START_ARGS=("$@")
	case $1 in
	herald)
		"$HERALD" --listen "127.0.0.1:$HERALD_PORT" --workers "${2:-1}" >>"$OUT/herald.log" 2>&1 &
		SERVER_PID=$!
		wait_port "$HERALD_PORT" || { SERVER_PID=""; return 1; }
		SAMPLE_PIDS=(--server-pid "$SERVER_PID")
		SERVER_ADDR=127.0.0.1:$HERALD_PORT ;;
	nchan)
		mkdir -p "$TMP/nchan"
		sed "s/127\.0\.0\.1:9200/127.0.0.1:$NCHAN_PORT/" "$ROOT/tools/bench/nchan.conf" >"$TMP/nchan/nginx.conf"
		nginx -p "$TMP/nchan" -c "$TMP/nchan/nginx.conf" -g 'daemon off;' >>"$OUT/nchan.log" 2>&1 &
		SERVER_PID=$!
		wait_port "$NCHAN_PORT" || { SERVER_PID=""; return 1; }
		local w
		w=$(pgrep -P "$SERVER_PID" | head -n 1)
		SAMPLE_PIDS=(--server-pid "${w:-$SERVER_PID}")
		SERVER_ADDR=127.0.0.1:$NCHAN_PORT ;;
	floor)
		"$FLOOR" --listen "127.0.0.1:$FLOOR_PORT" >>"$OUT/floor.log" 2>&1 &
		SERVER_PID=$!
		wait_port "$FLOOR_PORT" || { SERVER_PID=""; return 1; }
		SAMPLE_PIDS=(--server-pid "$SERVER_PID")
		SERVER_ADDR=127.0.0.1:$FLOOR_PORT ;;
	esac
}

# bench TARGET NAME SCENARIO [options...]: one herald-bench run, all outputs kept.
bench() {
	local t=$1 name=$2 sc=$3
	shift 3
	log "$t: $name"
	echo "\$ herald-bench $sc --target $t --server $SERVER_ADDR $*" >>"$OUT/$t-$name.txt"
	"$BENCH" "$sc" --target "$t" --server "$SERVER_ADDR" "${SAMPLE_PIDS[@]}" --label "$t-$name" \
		--json "$OUT/$t-$name.json" --csv "$OUT/$t-$name.csv" --plot "$OUT/plots" --quiet "$@" \
		2>>"$LOG" | tee -a "$OUT/$t-$name.txt"
	if [ -n "$SERVER_PID" ] && ! kill -0 "$SERVER_PID" 2>/dev/null; then
		wait "$SERVER_PID" 2>/dev/null
		local rc=$?
		log "$t: the server EXITED during '$name' (status $rc$([ $rc -gt 128 ] && echo ", signal $((rc - 128))")): figures of this run are void; restarting it"
		echo "SERVER EXITED during this run (status $rc)" >>"$OUT/$t-$name.txt"
		SERVER_PID=""
		start_server "${START_ARGS[@]}" || log "$t: restart failed"
	fi
}

run_target() {
	local t=$1 tr
	for tr in ws sse; do
		[ "$t" = floor ] && [ "$tr" = sse ] && continue
		start_server "$t" || return 1
		bench "$t" "idle-$tr" idle --transport "$tr" --conns "$IDLE_CONNS" --hold "$IDLE_HOLD" --connect-rate 4000
	done
	start_server "$t" || return 1
	for tr in ws sse; do
		[ "$t" = floor ] && [ "$tr" = sse ] && continue
		bench "$t" "fanout-$tr" fanout --transport "$tr" --conns "$FANOUT_CONNS" --messages "$FANOUT_MESSAGES" \
			--rate "$FANOUT_RATE" --payload "$PAYLOAD"
	done
	bench "$t" burst fanout --transport ws --conns "$BURST_CONNS" --messages "$BURST_MESSAGES" \
		--burst "$BURST_SIZE" --rate "$BURST_RATE" --payload "$PAYLOAD"
	bench "$t" throughput fanout --transport ws --conns "$THRU_CONNS" --messages "$THRU_MESSAGES" --rate 0 \
		--publishers 4 --payload "$PAYLOAD"
	bench "$t" connect connect --transport ws --conns "$STORM_CONNS" --connect-rate 0 --procs 2
	bench "$t" publish publish --publishers "$PUB_PUBLISHERS" --duration "$PUB_SECONDS" --payload "$PAYLOAD"
	[ "$t" = floor ] && return 0
	local n series=()
	for n in $GAME_SERIES; do
		bench "$t" "game-$n" game --conns "$n" --connect-rate "$GAME_RATE" --time-scale "$GAME_SCALE" \
			--duration "$GAME_SECONDS"
		series+=("$OUT/$t-game-$n.json")
	done
	bench "$t" game game --conns "$GAME_USERS" --connect-rate "$GAME_RATE" --time-scale "$GAME_SCALE" \
		--duration "$GAME_SECONDS"
	series+=("$OUT/$t-game.json")
	"$BENCH" meters "${series[@]}" --json "$OUT/$t-meters.json" | tee "$OUT/$t-meters.txt"
	bench "$t" pvp pull-vs-push --pvp-clients "$PVP_CLIENTS" --pvp-intervals "$PVP_INTERVALS" \
		--pvp-publishes "$PVP_PUBLISHES" --time-scale "$PVP_SCALE"
	if [ "$t" = herald ]; then
		# both cores: the same flat-out fan-out with 2 worker threads
		start_server herald 2 || return 1
		bench herald throughput-2w fanout --transport ws --conns "$THRU_CONNS" --messages "$THRU_MESSAGES" \
			--rate 0 --publishers 4 --payload "$PAYLOAD"
	fi
	stop_server
}

log "results in $OUT"
{
	echo "date: $(date -Is)"
	echo "host: $(uname -srm), $(nproc) cores, $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo)"
	echo "git: $(git rev-parse --short HEAD 2>/dev/null)"
	echo "nginx: $(nginx -v 2>&1)"
} >"$OUT/env.txt"
for t in $TARGETS; do
	case $t in
	herald)
		if [ ! -x "$HERALD" ]; then
			log "herald: $HERALD is missing: skipping herald (build it, then rerun)"
			continue
		fi
		if ! start_server herald; then
			log "herald: failed to start on 127.0.0.1:$HERALD_PORT (see $OUT/herald.log): skipping herald"
			continue
		fi ;;
	nchan)
		if [ ! -e /usr/lib/nginx/modules/ngx_nchan_module.so ] || ! command -v nginx >/dev/null; then
			log "nchan: nginx-light / libnginx-mod-nchan not installed (scripts/install-deps.sh --bench): skipping"
			continue
		fi ;;
	esac
	run_target "$t" || log "$t: a server failed to start: its remaining scenarios were skipped"
done
python3 "$ROOT/tools/bench/summarize.py" "$OUT" | tee "$OUT/summary.txt"
log "done: $OUT"
