/*
 * apps_file: the --state-dir store of apps (see apps.h, struct apps_store).
 *
 * DIR/apps.json is a snapshot {"version":1,"apps":[state…]}; DIR/apps.log a
 * journal of the changes since, one JSON line each ({"put":state} or
 * {"delete":name}), appended and fsync'ed before the change is answered. A
 * change costs one small write, however many apps there are; when the journal
 * holds as many lines as the snapshot has apps (and at least 64), a thread of the
 * store's own writes the registry as a new snapshot (temporary file, fsync,
 * rename, fsync of the directory), so that no worker waits for it: changes go on
 * into a new journal (apps.log.new) meanwhile, which becomes apps.log once the
 * snapshot is in place. A crash leaves the old snapshot or the new one and the
 * journals written since, in order (apps.log, then apps.log.new), whose last line
 * may be cut short (ignored on load); every line is a whole state, so replaying
 * one the snapshot already has changes nothing.
 */
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "apps/apps.h"
#include "core/log.h"

struct file_store {
    struct apps_store s;
    pthread_mutex_t lock; /* one writer at a time; the fields below */
    pthread_cond_t wake;  /* the compactor has work, or must stop */
    pthread_t compactor;
    bool started, want, stop;
    bool stuck; /* a snapshot failed: two journals hold changes, none may be dropped */
    char dir[512];
    char snap[600], tmp[620], journal[600], journal_new[610];
    int log_fd, lock_fd;
    size_t log_lines, snap_apps;
};

static void fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

static bool write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

/* Writes states (taken) as the snapshot, atomically. No lock needed: one writer (the
 * compactor, or the load before it runs). */
static bool write_snapshot(struct file_store *f, json_t *states)
{
    json_t *doc = json_pack("{s:i,s:o}", "version", 1, "apps", states);
    char *text = json_dumps(doc, JSON_INDENT(1) | JSON_SORT_KEYS);
    json_decref(doc);
    int fd = open(f->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    bool ok = fd >= 0 && write_all(fd, text, strlen(text)) && fsync(fd) == 0;
    if (fd >= 0)
        ok &= close(fd) == 0;
    free(text);
    /* The snapshot's JSON (about 400 bytes an app) is freed: hand it back to the system
     * rather than keep it in this thread's malloc arena for good. */
    malloc_trim(0);
    ok = ok && rename(f->tmp, f->snap) == 0;
    if (!ok) {
        log_error("apps: could not write %s: %s", f->snap, strerror(errno));
        unlink(f->tmp);
        return false;
    }
    fsync_dir(f->dir);
    return true;
}

/*
 * The compactor: on a signal, switches the journal to apps.log.new (so that changes go
 * on without waiting), writes the registry as the snapshot, and makes the new journal
 * apps.log. Runs until the store is freed.
 */
static void *compactor(void *arg)
{
    struct file_store *f = arg;
    pthread_mutex_lock(&f->lock);
    for (;;) {
        while (!f->want && !f->stop)
            pthread_cond_wait(&f->wake, &f->lock);
        if (f->stop)
            break;
        f->want = false;
        json_t *states = apps_states(); /* every change journaled so far is in it */
        int fd = open(f->journal_new, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
        if (fd < 0) {
            log_error("apps: cannot open %s: %s", f->journal_new, strerror(errno));
            json_decref(states);
            continue;
        }
        fsync_dir(f->dir);
        int old = f->log_fd;
        f->log_fd = fd;
        f->log_lines = 0;
        f->snap_apps = json_array_size(states);
        pthread_mutex_unlock(&f->lock);
        bool ok = write_snapshot(f, states);
        pthread_mutex_lock(&f->lock);
        if (ok && rename(f->journal_new, f->journal) == 0) {
            fsync_dir(f->dir);
        } else {
            f->stuck = true; /* both journals are needed at the next start */
            log_error("apps: %s and %s both hold changes until the next start (no snapshot "
                      "could be written): check the disk",
                      f->journal, f->journal_new);
        }
        close(old);
    }
    pthread_mutex_unlock(&f->lock);
    return NULL;
}

static int file_put(struct apps_store *s, const char *name, json_t *state, enum apps_put how)
{
    struct file_store *f = (struct file_store *)s;
    json_t *entry = state ? json_pack("{s:O}", "put", state) : json_pack("{s:s}", "delete", name);
    char *line = json_dumps(entry, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(entry);
    size_t n = strlen(line);
    line = xrealloc(line, n + 2);
    line[n++] = '\n';
    pthread_mutex_lock(&f->lock);
    int rc = 0;
    if (!write_all(f->log_fd, line, n) || fdatasync(f->log_fd) != 0) {
        log_error("apps: could not append to %s: %s; the change to %s holds until a restart",
                  f->journal, strerror(errno), name);
        rc = APPS_STATE;
    } else if (++f->log_lines >= 64 && f->log_lines >= f->snap_apps && !f->stuck) {
        f->want = true; /* the compactor writes a snapshot; nobody waits for it */
        pthread_cond_signal(&f->wake);
    }
    pthread_mutex_unlock(&f->lock);
    free(line);
    (void)how;
    return rc;
}

/*
 * Replays the journal's lines onto states (an object by name). Only the last line
 * may be cut short (a crash in the middle of an append): it is ignored. A bad line
 * with good ones after it is damage that would silently undo changes (a revoked key,
 * a deleted app): start-up stops. Returns the lines read, or -1 with a message.
 */
static long replay(const char *path, json_t *by_name, char *err, size_t errlen)
{
    FILE *fp = fopen(path, "r");
    if (!fp)
        return 0;
    char *line = NULL;
    size_t cap = 0, lines = 0, bad = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, fp)) > 0) {
        json_t *e = json_loadb(line, (size_t)n, 0, NULL);
        json_t *put = json_object_get(e, "put");
        const char *del = json_string_value(json_object_get(e, "delete"));
        const char *name = json_string_value(json_object_get(put, "name"));
        lines++;
        if (bad && (name || del)) {
            json_decref(e);
            break;
        }
        if (name)
            json_object_set(by_name, name, put);
        else if (del)
            json_object_del(by_name, del);
        else
            bad = lines;
        json_decref(e);
    }
    free(line);
    fclose(fp);
    if (bad && bad != lines) {
        snprintf(err, errlen,
                 "%s line %zu is damaged and changes follow it: restore the directory from a "
                 "backup, or remove that line knowingly",
                 path, bad);
        return -1;
    }
    if (bad)
        log_warn("apps: %s line %zu is not a change (cut short by a crash): ignored", path, bad);
    return (long)lines;
}

static int file_load(struct apps_store *s, char *err, size_t errlen)
{
    struct file_store *f = (struct file_store *)s;
    struct stat st;
    if (stat(f->dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "--state-dir %s is not a directory; create it (mkdir -p) first",
                 f->dir);
        return -1;
    }
    if (access(f->dir, W_OK) != 0) {
        snprintf(err, errlen, "--state-dir %s is not writable by this user", f->dir);
        return -1;
    }
    /* One herald per directory: a second one would overwrite the first's changes. */
    char lock[600];
    snprintf(lock, sizeof(lock), "%s/.lock", f->dir);
    f->lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (f->lock_fd < 0 || flock(f->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        snprintf(err, errlen,
                 "--state-dir %s is in use by another herald (%s): give each node its own "
                 "directory (in cluster mode apps live in Redis)",
                 f->dir, f->lock_fd < 0 ? strerror(errno) : "its lock is held");
        return -1;
    }
    json_t *by_name = json_object();
    if (stat(f->snap, &st) == 0) {
        json_error_t jerr;
        json_t *doc = json_load_file(f->snap, 0, &jerr);
        json_t *arr = doc ? json_object_get(doc, "apps") : NULL;
        if (!json_is_array(arr)) {
            snprintf(err, errlen, "%s is not herald's apps file (%s); move it away to start empty",
                     f->snap, doc ? "no \"apps\" array" : jerr.text);
            json_decref(doc);
            json_decref(by_name);
            return -1;
        }
        size_t i;
        json_t *o;
        json_array_foreach(arr, i, o)
        {
            const char *name = json_string_value(json_object_get(o, "name"));
            if (name)
                json_object_set(by_name, name, o);
        }
        json_decref(doc);
    }
    long lines = replay(f->journal, by_name, err, errlen), more = 0;
    if (lines >= 0) /* a compaction that did not finish: its newer journal comes after */
        more = replay(f->journal_new, by_name, err, errlen);
    if (lines < 0 || more < 0) {
        json_decref(by_name);
        return -1;
    }
    json_t *states = json_array();
    const char *k;
    json_t *v;
    json_object_foreach(by_name, k, v) json_array_append(states, v);
    apps_sync(states, false);
    json_decref(states);
    json_decref(by_name);
    f->log_fd = open(f->journal, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (f->log_fd < 0) {
        snprintf(err, errlen, "cannot open %s: %s", f->journal, strerror(errno));
        return -1;
    }
    if (lines || more) {
        /* Start from one snapshot (a journal cut short is repaired here). */
        if (!write_snapshot(f, apps_states())) {
            snprintf(err, errlen, "cannot write %s: %s", f->snap, strerror(errno));
            return -1;
        }
        if (ftruncate(f->log_fd, 0) != 0 || fsync(f->log_fd) != 0) {
            snprintf(err, errlen, "cannot empty %s: %s", f->journal, strerror(errno));
            return -1;
        }
        unlink(f->journal_new);
        fsync_dir(f->dir);
    }
    f->snap_apps = apps_count();
    if (pthread_create(&f->compactor, NULL, compactor, f) != 0) {
        snprintf(err, errlen, "cannot start the state directory's thread");
        return -1;
    }
    f->started = true;
    return 0;
}

static void file_free(struct apps_store *s)
{
    struct file_store *f = (struct file_store *)s;
    if (f->started) {
        pthread_mutex_lock(&f->lock);
        f->stop = true;
        pthread_cond_signal(&f->wake);
        pthread_mutex_unlock(&f->lock);
        pthread_join(f->compactor, NULL);
    }
    if (f->log_fd >= 0)
        close(f->log_fd);
    if (f->lock_fd >= 0)
        close(f->lock_fd);
    pthread_mutex_destroy(&f->lock);
    pthread_cond_destroy(&f->wake);
    free(f);
}

struct apps_store *apps_file_store_new(const char *dir)
{
    struct file_store *f = xcalloc(1, sizeof(*f));
    f->s.load = file_load;
    f->s.put = file_put;
    f->s.free = file_free;
    f->log_fd = f->lock_fd = -1;
    pthread_mutex_init(&f->lock, NULL);
    pthread_cond_init(&f->wake, NULL);
    snprintf(f->dir, sizeof(f->dir), "%s", dir);
    snprintf(f->snap, sizeof(f->snap), "%s/apps.json", dir);
    snprintf(f->tmp, sizeof(f->tmp), "%s/.apps.json.tmp", dir);
    snprintf(f->journal, sizeof(f->journal), "%s/apps.log", dir);
    snprintf(f->journal_new, sizeof(f->journal_new), "%s/apps.log.new", dir);
    return &f->s;
}
