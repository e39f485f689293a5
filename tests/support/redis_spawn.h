/*
 * redis_spawn: test support — starts real redis-server processes (single or a
 * Redis Cluster) on free loopback ports in a private temporary directory, and
 * kills them all again. Blocking by design; never called by the server itself.
 * Children get PR_SET_PDEATHSIG(SIGKILL), and redis_spawn_cleanup() runs at
 * exit, so a crashed or failed test leaves no server behind.
 */
#ifndef HERALD_REDIS_SPAWN_H
#define HERALD_REDIS_SPAWN_H

#include <stdbool.h>
#include <sys/types.h>

#define REDIS_SPAWN_MAX 16

struct redis_node_proc {
    pid_t pid; /* 0 when not running */
    int port;
};

struct redis_cluster_procs {
    int n;
    struct redis_node_proc node[REDIS_SPAWN_MAX];
};

/* A loopback port that is free now (and whose +10000 cluster bus port is free). */
int redis_spawn_free_port(void);
/* Starts redis-server on `port` (0: pick one) and waits until it answers PING (10 s).
 * cluster: with --cluster-enabled. Returns 0 or -1 (nothing left running). */
int redis_spawn_start(struct redis_node_proc *p, int port, bool cluster);
/* Sends sig (SIGTERM/SIGKILL) and reaps the process. */
void redis_spawn_stop(struct redis_node_proc *p, int sig);
/* Starts masters*(1+replicas) cluster nodes, runs `redis-cli --cluster create`, and
 * waits until every node says cluster_state:ok and each master has its replicas
 * online. Returns 0 or -1 (nodes stopped). */
int redis_spawn_cluster(struct redis_cluster_procs *cl, int masters, int replicas);
/* Stops everything this process started and removes the temporary directory. */
void redis_spawn_cleanup(void);
/* Runs one command on 127.0.0.1:port with a blocking client; returns the reply
 * (free with freeReplyObject) or NULL. Format as redisCommand(). */
void *redis_spawn_cmd(int port, const char *fmt, ...);

#endif
