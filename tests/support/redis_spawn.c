/*
 * redis_spawn: fork/exec redis-server and redis-cli for tests. Ports come from
 * binding port 0 and releasing it (a small race we accept in tests); readiness
 * is checked with hiredis' blocking client, which is independent of resp_conn.
 */
#include "redis_spawn.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "core/util.h"

static char tmpdir[64];
static struct redis_node_proc *started[64];
static int nstarted;

static int bind_port(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof(sa);
    int got = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &sl) == 0)
        got = ntohs(sa.sin_port);
    if (fd >= 0)
        close(fd);
    return got;
}

int redis_spawn_free_port(void)
{
    for (int i = 0; i < 200; i++) {
        int p = bind_port(0);
        if (p > 0 && p < 55000 && bind_port(p + 10000) > 0)
            return p;
    }
    return -1;
}

void *redis_spawn_cmd(int port, const char *fmt, ...)
{
    struct timeval tv = {.tv_sec = 2};
    redisContext *ctx = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (!ctx || ctx->err) {
        redisFree(ctx);
        return NULL;
    }
    redisSetTimeout(ctx, tv);
    va_list ap;
    va_start(ap, fmt);
    void *r = redisvCommand(ctx, fmt, ap);
    va_end(ap);
    redisFree(ctx);
    return r;
}

static bool answers_ping(int port)
{
    redisReply *r = redis_spawn_cmd(port, "PING");
    bool ok = r && r->type == REDIS_REPLY_STATUS;
    if (r)
        freeReplyObject(r);
    return ok;
}

static void ensure_tmpdir(void)
{
    if (tmpdir[0])
        return;
    strcpy(tmpdir, "/tmp/herald-redis-XXXXXX");
    if (!mkdtemp(tmpdir))
        abort();
    atexit(redis_spawn_cleanup);
}

/* Forks argv with stdout/stderr to /dev/null (or to log, if given) and PDEATHSIG. */
static pid_t spawn(char *const argv[], const char *log)
{
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int fd = open(log ? log : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
    }
    setpgid(0, 0);
    execvp(argv[0], argv);
    _exit(127);
}

int redis_spawn_start(struct redis_node_proc *p, int port, bool cluster)
{
    ensure_tmpdir();
    p->port = port ? port : redis_spawn_free_port();
    char ports[16], conf[128], log[128];
    snprintf(ports, sizeof(ports), "%d", p->port);
    snprintf(conf, sizeof(conf), "%s/nodes-%d.conf", tmpdir, p->port);
    snprintf(log, sizeof(log), "%s/redis-%d.log", tmpdir, p->port);
    /* Cluster nodes: a replica shows in CLUSTER SLOTS once its replication offset is not 0,
     * after the initial sync (delayed 5 s by default) and its master's first ping (every
     * 10 s by default); with the defaults a new 3+3 cluster took 10 s to settle. */
    char *argv[] = {"redis-server",
                    "--port",
                    ports,
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--dir",
                    tmpdir,
                    cluster ? "--cluster-enabled" : NULL,
                    "yes",
                    "--cluster-config-file",
                    conf,
                    "--cluster-node-timeout",
                    "2000",
                    "--repl-ping-replica-period",
                    "1",
                    "--repl-diskless-sync-delay",
                    "0",
                    NULL};
    p->pid = spawn(argv, log);
    if (p->pid < 0)
        return -1;
    if (nstarted < (int)ARRAY_LEN(started))
        started[nstarted++] = p;
    for (int i = 0; i < 200; i++) {
        if (answers_ping(p->port))
            return 0;
        if (waitpid(p->pid, NULL, WNOHANG) == p->pid) {
            p->pid = 0;
            return -1;
        }
        usleep(50000);
    }
    redis_spawn_stop(p, SIGKILL);
    return -1;
}

void redis_spawn_stop(struct redis_node_proc *p, int sig)
{
    if (p->pid <= 0)
        return;
    kill(p->pid, sig);
    waitpid(p->pid, NULL, 0);
    p->pid = 0;
}

void redis_spawn_cleanup(void)
{
    for (int i = 0; i < nstarted; i++)
        redis_spawn_stop(started[i], SIGKILL);
    nstarted = 0;
    if (tmpdir[0]) {
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
        if (system(cmd) != 0)
            fprintf(stderr, "redis_spawn: could not remove %s\n", tmpdir);
        tmpdir[0] = '\0';
    }
}

static bool reply_contains(redisReply *r, const char *s)
{
    bool ok = r && r->type == REDIS_REPLY_STRING && strstr(r->str, s);
    if (r)
        freeReplyObject(r);
    return ok;
}

/* Every node sees a healthy cluster with `replicas` replicas behind every slot range. */
static bool cluster_settled(const struct redis_cluster_procs *cl, int replicas)
{
    for (int i = 0; i < cl->n; i++) {
        if (!reply_contains(redis_spawn_cmd(cl->node[i].port, "CLUSTER INFO"), "cluster_state:ok"))
            return false;
        redisReply *r = redis_spawn_cmd(cl->node[i].port, "CLUSTER SLOTS");
        bool ok = r && r->type == REDIS_REPLY_ARRAY && r->elements > 0;
        for (size_t j = 0; ok && j < r->elements; j++)
            ok = r->element[j]->elements >= (size_t)(3 + replicas);
        if (r)
            freeReplyObject(r);
        if (!ok)
            return false;
    }
    return true;
}

int redis_spawn_cluster(struct redis_cluster_procs *cl, int masters, int replicas)
{
    cl->n = masters * (1 + replicas);
    if (cl->n > REDIS_SPAWN_MAX)
        return -1;
    char *argv[REDIS_SPAWN_MAX + 8], addrs[REDIS_SPAWN_MAX][32], reps[8];
    int a = 0;
    argv[a++] = "redis-cli";
    argv[a++] = "--cluster";
    argv[a++] = "create";
    for (int i = 0; i < cl->n; i++) {
        if (redis_spawn_start(&cl->node[i], 0, true) < 0)
            goto fail;
        snprintf(addrs[i], sizeof(addrs[i]), "127.0.0.1:%d", cl->node[i].port);
        argv[a++] = addrs[i];
    }
    snprintf(reps, sizeof(reps), "%d", replicas);
    argv[a++] = "--cluster-replicas";
    argv[a++] = reps;
    argv[a++] = "--cluster-yes";
    argv[a] = NULL;
    int status;
    pid_t pid = spawn(argv, NULL);
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0)
        goto fail;
    for (int i = 0; i < 400; i++) {
        if (cluster_settled(cl, replicas))
            return 0;
        usleep(50000);
    }
fail:
    for (int i = 0; i < cl->n; i++)
        redis_spawn_stop(&cl->node[i], SIGKILL);
    return -1;
}
