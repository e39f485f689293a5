# Placeholder: the bench author replaces this with the rules for herald-bench
# and the raw-socket floor. Must define the `bench-bins` target.
bench-bins:
