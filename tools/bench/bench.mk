# herald-bench and the raw-socket floor (included by the top Makefile, which
# defines BUILD, CC, CFLAGS, LDSAN). Sources: tools/bench/*.c and
# tools/bench/floor/floor.c. See docs/bench.md.

BENCH_SRC   := $(wildcard tools/bench/*.c)
BENCH_OBJ   := $(BENCH_SRC:%.c=$(BUILD)/%.o)
FLOOR_OBJ   := $(BUILD)/tools/bench/floor/floor.o
BENCH_LIBS  := -ljansson -lcrypto -lm -pthread

# base64url_encode (subscriber tokens) is herald's own, from src/core/util.c.
$(BUILD)/herald-bench: $(BENCH_OBJ) $(BUILD)/src/core/util.o
	$(CC) $(LDSAN) -o $@ $^ $(BENCH_LIBS)

$(BUILD)/herald-floor: $(FLOOR_OBJ)
	$(CC) $(LDSAN) -o $@ $^

bench-bins: $(BUILD)/herald-bench $(BUILD)/herald-floor

-include $(BENCH_OBJ:.o=.d) $(FLOOR_OBJ:.o=.d)
