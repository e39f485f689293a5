/*
 * tls: the server side of TLS for the --listen-tls listeners, with OpenSSL driven
 * non-blocking on the edge-triggered worker loops.
 *
 * A connection accepted on a TLS listener carries a struct tls_conn, and conn.c
 * reads and writes through it instead of the socket: tls_read() in place of
 * read(), tls_writev() in place of writev(). The handshake has no state of its
 * own: it runs inside the first reads (SSL_read in accept state drives it), so
 * the header timeout that bounds a slow request also bounds a slow or half-open
 * handshake. What OpenSSL asks for in the other direction (a read that must
 * write, a write that must read) is remembered and tls_events() turns the other
 * readiness edge into the one the stalled call waits for.
 *
 * Certificates live in a struct tls_server shared by the workers: SIGHUP builds a
 * new OpenSSL context from the files and swaps it in (new handshakes use it; live
 * connections keep the one they started with); a file that does not load leaves
 * the old context in place.
 *
 * Threads: a tls_conn is only touched by its connection's worker. tls_server_reload
 * may run on any thread, concurrently with tls_conn_new on the workers.
 */
#ifndef HERALD_TLS_H
#define HERALD_TLS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

struct tls_server;
struct tls_conn;

/* TLS figures of the process (for /stats and /metrics). */
struct tls_stats {
    uint64_t connections; /* open TLS connections */
    uint64_t handshakes;  /* completed handshakes */
    uint64_t resumed;     /* of which resumed a session */
    uint64_t failed;      /* connections that ended before their handshake completed */
};
void tls_stats(struct tls_stats *out);

/*
 * Loads the certificate chain (PEM, the server's certificate first) and its
 * private key (PEM; key_file NULL or "": the key is in cert_file). Returns the
 * server, or NULL after logging what is wrong with which file and what to do.
 * The paths are copied (reloads read them again).
 */
struct tls_server *tls_server_new(const char *cert_file, const char *key_file);
/* Reads the files again (SIGHUP). Returns 0, or -1 after logging why: then the
 * previous certificate stays in use. */
int tls_server_reload(struct tls_server *ts);
/* Frees the server; connections made from it may live on (they hold references). */
void tls_server_free(struct tls_server *ts);

/* A TLS session on the accepted socket fd (not taken: the caller closes it). NULL
 * when OpenSSL cannot make one (out of memory). */
struct tls_conn *tls_conn_new(struct tls_server *ts, int fd);
/*
 * Sends close_notify if the session is healthy and nothing is half written,
 * then frees it. Does not close the socket.
 */
void tls_conn_free(struct tls_conn *t);

/*
 * Like read(2): decrypted bytes (> 0), 0 at the end of the stream (close_notify
 * or the peer's EOF), or -1 with errno EAGAIN (nothing more now: the handshake or
 * the next record waits for the peer, and a readiness edge will come), EPROTO (a
 * TLS failure: garbage, no common version or protocol) or a socket error. A
 * return shorter than cap does not mean the socket is drained: call again until
 * EAGAIN.
 */
ssize_t tls_read(struct tls_conn *t, void *buf, size_t cap);
/*
 * Encrypts the first bytes of iov[0..n) (at most one record, 16 KiB) and writes
 * them. Returns the bytes taken from iov (the caller consumes them) or -1 with
 * errno set (the connection is broken). *blocked is set when the socket is full:
 * wait for the next readiness (tls_events) before calling again. Bytes taken but
 * not yet on the wire stay here (tls_write_pending) and go first on the next call,
 * which may pass n = 0 to write only them.
 */
ssize_t tls_writev(struct tls_conn *t, const struct iovec *iov, int n, bool *blocked);
/* Whether bytes taken by tls_writev still wait to be written. */
bool tls_write_pending(const struct tls_conn *t);
/* Sends close_notify (the write side is done); reading goes on. */
void tls_shutdown(struct tls_conn *t);
/* The readiness edges (POLLER_*) as the connection should see them: a read that
 * waits for the socket to take bytes runs on POLLER_OUT, a write that waits for
 * bytes from the peer on POLLER_IN. */
uint32_t tls_events(const struct tls_conn *t, uint32_t events);

#endif
