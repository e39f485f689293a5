# herald — build, run, test, fuzz, bench.
#
#   make run     install missing Debian packages, build, start herald on :8080
#   make test    install, build, unit tests (plain, ASan+UBSan and TSan builds),
#                a short bounded fuzz run, the integration tests (plain and
#                ASan+UBSan builds, and their thread-heavy slice under TSan)
#   make fuzz    run the parser fuzzers for FUZZ_SECONDS each (default 60)
#   make bench   herald vs Nchan vs the raw-socket floor (docs/bench.md)
#   make bench-tls  herald vs Nchan over TLS: idle memory, handshakes/s (docs/bench.md)
#   make bench-provision  Tsuru provisioning end to end and memory per idle app (docs/bench.md)
#   make soak    long-running delivery soak test
#
# Build variants live in their own directories: build/ (release, -O2 -g, assert()s
# compiled out: the invariant checks run in the sanitizer builds),
# build-asan/ (VARIANT=asan: AddressSanitizer + UndefinedBehaviorSanitizer) and
# build-tsan/ (VARIANT=tsan: ThreadSanitizer).

CC      ?= cc
PYTHON  := /usr/bin/python3
VARIANT ?= release
ifeq ($(VARIANT),asan)
  BUILD   := build-asan
  OPT     := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  LDSAN   := -fsanitize=address,undefined
else ifeq ($(VARIANT),tsan)
  BUILD   := build-tsan
  OPT     := -O1 -g -fsanitize=thread -fno-omit-frame-pointer
  LDSAN   := -fsanitize=thread
  # gcc 12's TSan runtime cannot place its shadow memory under the wider address
  # randomization of some kernels (vm.mmap_rnd_bits 32: "FATAL: ThreadSanitizer:
  # unexpected memory mapping"): its tests (and the herald they start) run without it.
  RUN     := setarch $(shell uname -m) -R
else
  BUILD   := build
  OPT     := -O2 -g -DNDEBUG
  LDSAN   :=
endif

WARN    := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wno-unused-parameter
CFLAGS  := -std=c11 -D_GNU_SOURCE $(OPT) $(WARN) -MMD -MP -Isrc -pthread
LDLIBS  := -lssl -lcrypto -lz -ljansson -lhiredis -lcurl -lm -pthread

LIB_SRC := $(filter-out src/main.c,$(wildcard src/*/*.c))
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
MAIN_OBJ := $(BUILD)/src/main.o
UNIT_SRC := $(wildcard tests/unit/*_test.c)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)

HERALD := $(BUILD)/herald
BENCH  := $(BUILD)/herald-bench

.PHONY: all bench-bins deps run test unit integration fuzz fuzz-short bench bench-tls bench-provision soak clean format

all: $(HERALD) $(UNIT_BIN) bench-bins

deps:
	@./scripts/install-deps.sh

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

# The admin UI (web/admin/) is served by herald under /admin/: each file's bytes become a
# C initializer list that src/web/admin_ui.c includes.
ADMIN_UI := index.html ui.js ui.css
$(BUILD)/gen/admin/%.inc: web/admin/%
	@mkdir -p $(dir $@)
	xxd -i < $< > $@
$(BUILD)/src/web/admin_ui.o: $(ADMIN_UI:%=$(BUILD)/gen/admin/%.inc)
$(BUILD)/src/web/admin_ui.o: CFLAGS += -I$(BUILD)/gen

# The JS client (clients/js/herald.js, and herald-shared.js that it imports for tabs that
# share a connection) is served by herald as GET /herald.js and GET /herald-shared.js:
# each file's bytes become a C initializer list that src/web/client_js.c includes.
CLIENT_JS := herald.js herald-shared.js
$(BUILD)/gen/client/%.inc: clients/js/%
	@mkdir -p $(dir $@)
	xxd -i < $< > $@
$(BUILD)/src/web/client_js.o: $(CLIENT_JS:%=$(BUILD)/gen/client/%.inc)
$(BUILD)/src/web/client_js.o: CFLAGS += -I$(BUILD)/gen

$(HERALD): $(LIB_OBJ) $(MAIN_OBJ)
	$(CC) $(LDSAN) -o $@ $^ $(LDLIBS)

# herald-bench and its helpers (raw-socket floor) are built by tools/bench/bench.mk.
-include tools/bench/bench.mk

# What only tests need (tests/support: starting redis-server): in the test binaries, not herald.
TEST_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(wildcard tests/support/*.c))
# Made only by a pattern rule, make would take them for intermediate files, delete
# them, and relink every test binary on the next run.
.SECONDARY: $(TEST_OBJ)

$(BUILD)/tests/%_test: tests/unit/%_test.c $(LIB_OBJ) $(TEST_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests $(LDSAN) -o $@ $^ $(LDLIBS) -lcmocka

run: deps
	@$(MAKE) --no-print-directory $(HERALD)
	./$(HERALD) $(ARGS)

# One target per unit test binary, so `make -j -Otarget unit` runs them side by side
# (several wait for redis-server) with each one's output in one piece.
UNIT_RUN := $(UNIT_BIN:%=%.run)
.PHONY: $(UNIT_RUN)
unit: $(UNIT_RUN)
# A unit test binary that hangs fails after 5 minutes instead of holding up the run.
$(UNIT_RUN): %.run: %
	@echo "== $<"; $(RUN) timeout -k 10 300 ./$< || { echo "FAILED (or timed out): $<"; exit 1; }
# resp_conn_test times Redis connections against 300-500 ms timeouts: it runs after the
# others, alone.
$(BUILD)/tests/resp_conn_test.run: | $(filter-out %/resp_conn_test.run,$(UNIT_RUN))

# The integration suite runs in PYTEST_JOBS pytest-xdist workers (0: in this process).
# Its tests mostly wait (for herald, Redis, a timer), so on a 2-core machine 4 workers
# finish sooner than 2 (or 6). The tests of one xdist_group share a worker (a module's
# Redis Cluster is started once); tests marked `serial` run alone (conftest.py).
PYTEST_JOBS ?= 4
integration: $(HERALD)
	HERALD_BIN=$(abspath $(HERALD)) $(RUN) $(PYTHON) -m pytest -q -p no:cacheprovider \
	  -n $(PYTEST_JOBS) --dist loadgroup tests/integration $(PYTEST_ARGS)

# The part of the integration suite make test runs under ThreadSanitizer: the tests
# marked `threads` (cross-worker fan-out, the Redis thread, shutdown), but not those
# that give herald a 64 KiB stack (TSan's instrumented frames need more).
TSAN_TESTS := -m "threads and not small_stack"
JOBS := $(shell nproc 2>/dev/null || echo 2)
SUBMAKE := $(MAKE) --no-print-directory

test: deps
	@$(SUBMAKE) -j$(JOBS) all $(FUZZERS)
	@$(SUBMAKE) -j$(JOBS) VARIANT=asan all
	@$(SUBMAKE) -j$(JOBS) VARIANT=tsan all
	@$(SUBMAKE) -j4 -Otarget unit
	@$(SUBMAKE) -j4 -Otarget VARIANT=asan unit
	@$(SUBMAKE) -j4 -Otarget VARIANT=tsan unit
	@$(SUBMAKE) -j$(JOBS) -Otarget fuzz-short
	@$(SUBMAKE) integration
	@$(SUBMAKE) VARIANT=asan integration
	@$(SUBMAKE) VARIANT=tsan integration PYTEST_ARGS='$(TSAN_TESTS)'

# Fuzzers: clang + libFuzzer, each target links the parser it exercises (and what
# that needs). fuzz-short (in make test) shares FUZZ_SHORT_TOTAL seconds among them.
FUZZ_SECONDS ?= 60
FUZZ_SHORT_TOTAL ?= 60
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -O1 -g -Isrc -fsanitize=fuzzer,address,undefined
FUZZ_LIBS := -lssl -lcrypto -lz -ljansson -lhiredis -lm -pthread
FUZZ_HUB := $(wildcard src/hub/*.c) src/core/heap.c src/core/log.c src/core/map.c src/core/util.c \
  src/transport/ws_frame.c
build-fuzz/%_fuzz: tests/fuzz/%_fuzz.c
	@mkdir -p build-fuzz
	clang $(FUZZ_CFLAGS) -o $@ $^ $(FUZZ_LIBS)
build-fuzz/http_parser_fuzz build-fuzz/url_decode_fuzz: src/http/http_parser.c
build-fuzz/ws_frame_fuzz: src/transport/ws_frame.c
build-fuzz/cursor_fuzz: $(FUZZ_HUB)
build-fuzz/config_value_fuzz: src/core/config.c
build-fuzz/token_fuzz: src/auth/token.c src/hub/pattern.c src/core/util.c
build-fuzz/redis_payload_fuzz: src/cluster/redis_payload.c $(FUZZ_HUB)
build-fuzz/resp_reply_fuzz: src/cluster/redis_payload.c src/cluster/cluster_map.c \
  src/cluster/redis_bus.c src/cluster/resp_conn.c src/core/loop.c src/core/poller_epoll.c $(FUZZ_HUB)
FUZZERS := $(patsubst tests/fuzz/%.c,build-fuzz/%,$(wildcard tests/fuzz/*_fuzz.c))
FUZZ_SHORT_EACH := $(shell n=$(words $(FUZZERS)); t=$$(( $(FUZZ_SHORT_TOTAL) / (n ? n : 1) )); echo $$(( t < 2 ? 2 : t )))

fuzz: deps $(FUZZERS)
	@set -e; for f in $(FUZZERS); do n=$$(basename $$f _fuzz); mkdir -p build-fuzz/corpus-$$n; \
	  $$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 -artifact_prefix=build-fuzz/ build-fuzz/corpus-$$n tests/fuzz/corpus/$$n; done

# One target per fuzzer (make -j runs them side by side); a fuzzer that fails (a crash,
# a leak, a timeout) prints its whole log and fails the target.
FUZZ_SHORT_RUN := $(FUZZERS:%=%.short)
.PHONY: $(FUZZ_SHORT_RUN)
fuzz-short: $(FUZZ_SHORT_RUN)
$(FUZZ_SHORT_RUN): %.short: %
	@n=$$(basename $< _fuzz); mkdir -p build-fuzz/short-$$n; echo "== $< ($(FUZZ_SHORT_EACH) s)"; \
	  if $< -max_total_time=$(FUZZ_SHORT_EACH) -print_final_stats=0 -artifact_prefix=build-fuzz/ \
	       build-fuzz/short-$$n tests/fuzz/corpus/$$n > $@.log 2>&1; then tail -n 2 $@.log; \
	  else cat $@.log; exit 1; fi

bench: deps
	@./scripts/install-deps.sh --bench
	@$(MAKE) --no-print-directory all
	./tools/bench/run-bench.sh

# TLS: herald --listen-tls against Nchan behind nginx `listen ssl` (docs/bench.md#tls).
bench-tls: deps
	@./scripts/install-deps.sh --bench
	@$(MAKE) --no-print-directory $(HERALD)
	$(PYTHON) tools/bench/tls-bench.py $(HERALD)

# Tsuru service API: provision -> bind -> first message, memory per idle app (docs/bench.md).
bench-provision: deps
	@$(MAKE) --no-print-directory $(HERALD)
	$(PYTHON) tools/bench/provision-bench.py $(HERALD)

soak: $(HERALD)
	HERALD_BIN=$(abspath $(HERALD)) HERALD_SOAK=1 $(PYTHON) -m pytest -q -p no:cacheprovider tests/integration -m soak

# Every tracked C file: src/, tests/ and tools/bench/ (herald-bench and the floor).
format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf build build-asan build-tsan build-fuzz

-include $(LIB_OBJ:.o=.d) $(MAIN_OBJ:.o=.d) $(TEST_OBJ:.o=.d)
