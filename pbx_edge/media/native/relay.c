/*
 * relay.c - the native RTP/RTCP relay data plane behind pbx_edge.media.native.engine.
 *
 * Theory of operation
 * -------------------
 * The engine is split into shards (one per thread); a stream lives in shard stream_id % nshards.
 * Each shard owns an epoll set holding the four UDP sockets of each of its streams, an eventfd to
 * wake it for shutdown, a slot table of streams and one mutex. The shard thread waits in
 * epoll_wait; for each readable socket it takes the mutex, looks the stream up by (slot,
 * generation) from the epoll cookie, drains the socket with recvmmsg, applies the latching rules
 * of pbx_edge/media/engine.py per packet, relays the accepted ones with one sendmmsg from the
 * other side's socket, appends tap copies to one datagram for the tap socketpair, and unlocks.
 *
 * Control calls (from Python through ctypes, which releases the GIL) take the same mutex, so they
 * are synchronous: when relay_remove returns, the thread has no way to reach the stream again (a
 * stale epoll cookie no longer matches the slot generation) and the fds are closed after
 * EPOLL_CTL_DEL. The relay thread yields after each unlock while a control call is waiting, so a
 * busy relay cannot starve the asyncio loop for more than one socket drain.
 *
 * Nothing here blocks on the network: all I/O uses MSG_DONTWAIT, and a full tap or send buffer
 * drops the packet and counts it.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RELAY_ABI_VERSION 3

#define BATCH 32          /* datagrams per recvmmsg/sendmmsg */
#define ROUNDS 4          /* recvmmsg rounds per readiness event, for fairness between sockets */
#define BUF_SIZE 2048     /* a larger datagram is truncated by the kernel and dropped here */
#define MAX_EVENTS 64
#define TAP_CHUNK 16384   /* tap records are packed into datagrams of at most this size */
#define TAP_HEADER 20     /* u64 stream id, f64 arrival, u16 length, u16 side (native order) */
#define MAX_SHARDS 64
#define SLOT_BITS 24
#define WAKE_COOKIE UINT64_MAX

enum { SIDE_A = 0, SIDE_B = 1 };
enum { KIND_RTP = 0, KIND_RTCP = 1 };

/* ---- ABI structs, mirrored by ctypes in build.py --------------------------------------------- */

struct relay_side_stats {
    uint64_t rtp_packets_in;
    uint64_t rtp_bytes_in;
    uint64_t rtcp_packets_in;
    uint64_t rtp_packets_out;
    uint64_t rtp_bytes_out;
    uint64_t rtcp_packets_out;
    uint64_t strangers;
    uint64_t send_errors;
    double last_rx; /* CLOCK_MONOTONIC seconds; < 0 when nothing was accepted yet */
    uint32_t rtp_latched_port; /* 0 when not latched */
    uint32_t rtcp_latched_port;
    char rtp_latched_host[64];
    char rtcp_latched_host[64];
};

struct relay_stream_stats {
    struct relay_side_stats side[2];
};

struct relay_engine_stats {
    uint64_t streams;
    uint64_t packets_relayed;
    uint64_t bytes_relayed;
    uint64_t packets_dropped;
    uint64_t tap_drops;
};

/* ---- internal state ------------------------------------------------------------------------- */

struct addr {
    struct sockaddr_storage sa;
    socklen_t len; /* 0: no address */
};

struct side {
    int fd[2];             /* [KIND_RTP], [KIND_RTCP] */
    struct addr sdp[2];    /* where the SDP says this side's peer listens */
    struct addr latched[2];/* source this side's sockets latched to */
    int forward;           /* relay the other side's media toward this side */
    uint64_t rtp_packets_in, rtp_bytes_in, rtcp_packets_in;
    uint64_t rtp_packets_out, rtp_bytes_out, rtcp_packets_out;
    uint64_t strangers, send_errors;
    double last_rx;
};

struct stream {
    uint64_t id;
    int tap;    /* copy every RTP packet to the tap */
    int tap_pt; /* else copy only this payload type (telephone-event), -1: none */
    struct side side[2];
};

struct slot {
    struct stream *stream; /* NULL: free */
    uint32_t gen;
};

struct shard {
    struct relay *relay;
    int index;
    int epfd;
    int wakefd;
    pthread_t thread;
    int thread_started;
    pthread_mutex_t mu;
    atomic_int ctl_waiting; /* control calls waiting for mu: the relay thread yields to them */
    struct slot *slots;
    uint32_t nslots, cap;
    uint32_t *free_slots;
    uint32_t nfree;
    /* totals, guarded by mu */
    uint64_t streams, packets_relayed, bytes_relayed, packets_dropped, tap_drops;
    /* relay-thread-only scratch */
    struct mmsghdr in[BATCH], out[BATCH];
    struct iovec iov[BATCH];
    struct sockaddr_storage src[BATCH];
    unsigned char out_rtcp[BATCH];
    unsigned char (*bufs)[BUF_SIZE];
    unsigned char *tap_buf;
    size_t tap_len;
    uint32_t tap_records;
};

struct relay {
    int nshards;
    long coalesce_ns; /* see relay_create */
    int tap_fd;
    atomic_int stopping;
    struct shard shards[];
};

/* ---- helpers -------------------------------------------------------------------------------- */

static double monotonic_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int is_rtcp_payload(const unsigned char *p, size_t len) {
    return len > 1 && p[1] >= 200 && p[1] <= 204;
}

/* Same transport address: family, port and IP (IPv6 flow info and scope are not compared). */
static int addr_eq(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
    if (a->ss_family != b->ss_family)
        return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const struct sockaddr_in *)a, *y = (const struct sockaddr_in *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a, *y = (const struct sockaddr_in6 *)b;
        return x->sin6_port == y->sin6_port && memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
    }
    return 0;
}

static int addr_same(const struct addr *a, const struct addr *b) {
    if (a->len == 0 || b->len == 0)
        return a->len == b->len;
    return addr_eq(&a->sa, &b->sa);
}

static void addr_format(const struct addr *a, char *host, size_t hostlen, uint32_t *port) {
    host[0] = '\0';
    *port = 0;
    if (a->len == 0)
        return;
    if (a->sa.ss_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)&a->sa;
        inet_ntop(AF_INET, &v4->sin_addr, host, (socklen_t)hostlen);
        *port = ntohs(v4->sin_port);
    } else if (a->sa.ss_family == AF_INET6) {
        const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)&a->sa;
        inet_ntop(AF_INET6, &v6->sin6_addr, host, (socklen_t)hostlen);
        *port = ntohs(v6->sin6_port);
    }
}

/* An error that an ICMP message left on a UDP socket (only reported with IP_RECVERR or connect). */
static int is_icmp_error(int err) {
    return err == ECONNREFUSED || err == EHOSTUNREACH || err == ENETUNREACH || err == EHOSTDOWN ||
           err == ENETDOWN || err == EPROTO || err == EMSGSIZE;
}

static uint64_t make_handle(uint32_t gen, int shard, uint32_t slot) {
    return ((uint64_t)gen << 32) | ((uint64_t)shard << SLOT_BITS) | slot;
}

static uint64_t make_cookie(uint32_t gen, uint32_t slot, int side, int kind) {
    return ((uint64_t)gen << 32) | ((uint64_t)slot << 2) | (uint64_t)(side << 1 | kind);
}

static void ctl_lock(struct shard *sh) {
    atomic_fetch_add_explicit(&sh->ctl_waiting, 1, memory_order_relaxed);
    pthread_mutex_lock(&sh->mu);
    atomic_fetch_sub_explicit(&sh->ctl_waiting, 1, memory_order_relaxed);
}

static struct stream *lookup(struct shard *sh, uint32_t slot, uint32_t gen) {
    if (slot >= sh->nslots)
        return NULL;
    struct slot *s = &sh->slots[slot];
    return s->stream != NULL && s->gen == gen ? s->stream : NULL;
}

/* Find the shard and stream of a handle and lock the shard; NULL (unlocked) if unknown. */
static struct stream *lock_handle(struct relay *r, uint64_t handle, struct shard **out) {
    uint32_t shard = (uint32_t)(handle >> SLOT_BITS) & 0xff;
    if (r == NULL || shard >= (uint32_t)r->nshards)
        return NULL;
    struct shard *sh = &r->shards[shard];
    ctl_lock(sh);
    struct stream *st = lookup(sh, (uint32_t)handle & ((1u << SLOT_BITS) - 1), (uint32_t)(handle >> 32));
    if (st == NULL) {
        pthread_mutex_unlock(&sh->mu);
        return NULL;
    }
    *out = sh;
    return st;
}

/* ---- tap ------------------------------------------------------------------------------------ */

static void tap_flush(struct shard *sh) {
    if (sh->tap_records == 0)
        return;
    ssize_t n = send(sh->relay->tap_fd, sh->tap_buf, sh->tap_len, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0)
        sh->tap_drops += sh->tap_records;
    sh->tap_len = 0;
    sh->tap_records = 0;
}

static void tap_append(struct shard *sh, uint64_t id, int side, double arrival, const unsigned char *p,
                       size_t len) {
    if (sh->tap_len + TAP_HEADER + len > TAP_CHUNK)
        tap_flush(sh);
    unsigned char *h = sh->tap_buf + sh->tap_len;
    uint16_t len16 = (uint16_t)len, side16 = (uint16_t)side;
    memcpy(h, &id, 8);
    memcpy(h + 8, &arrival, 8);
    memcpy(h + 16, &len16, 2);
    memcpy(h + 18, &side16, 2);
    memcpy(h + TAP_HEADER, p, len);
    sh->tap_len += TAP_HEADER + len;
    sh->tap_records++;
}

/* ---- data plane ----------------------------------------------------------------------------- */

static void count_out(struct shard *sh, struct side *there, int rtcp, size_t len, int relayed) {
    if (rtcp) {
        there->rtcp_packets_out++;
    } else {
        there->rtp_packets_out++;
        there->rtp_bytes_out += len;
    }
    if (relayed) {
        sh->packets_relayed++;
        sh->bytes_relayed += len;
    }
}

static void send_batch(struct shard *sh, struct side *there, int fd, int m) {
    int off = 0;
    while (off < m) {
        int r = sendmmsg(fd, sh->out + off, (unsigned)(m - off), MSG_DONTWAIT | MSG_NOSIGNAL);
        if (r > 0) {
            for (int i = off; i < off + r; i++)
                count_out(sh, there, sh->out_rtcp[i], sh->out[i].msg_hdr.msg_iov->iov_len, 1);
            off += r;
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)) {
            /* socket buffer full: the rest of the batch would fail too */
            there->send_errors += (uint64_t)(m - off);
            sh->packets_dropped += (uint64_t)(m - off);
            return;
        }
        /* this datagram failed (ICMP error, bad destination): drop it, go on with the rest */
        there->send_errors++;
        sh->packets_dropped++;
        off++;
    }
}

static void drain(struct shard *sh, struct stream *st, int side, int kind) {
    struct side *here = &st->side[side], *there = &st->side[!side];
    int fd = here->fd[kind];
    for (int round = 0; round < ROUNDS; round++) {
        for (int i = 0; i < BATCH; i++) {
            struct msghdr *h = &sh->in[i].msg_hdr;
            sh->iov[i].iov_base = sh->bufs[i];
            sh->iov[i].iov_len = BUF_SIZE;
            h->msg_name = &sh->src[i];
            h->msg_namelen = sizeof sh->src[i];
            h->msg_iov = &sh->iov[i];
            h->msg_iovlen = 1;
            h->msg_control = NULL;
            h->msg_controllen = 0;
            h->msg_flags = 0;
        }
        int n = recvmmsg(fd, sh->in, BATCH, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (is_icmp_error(errno)) { /* an earlier send toward this side bounced */
                here->send_errors++;
                continue;
            }
            break; /* EAGAIN: drained */
        }
        double now = monotonic_now();
        int m = 0;
        struct addr *latch = &here->latched[kind];
        for (int i = 0; i < n; i++) {
            size_t len = sh->in[i].msg_len;
            const unsigned char *p = sh->bufs[i];
            if (sh->in[i].msg_hdr.msg_flags & MSG_TRUNC) {
                sh->packets_dropped++;
                continue;
            }
            if (latch->len == 0) {
                memcpy(&latch->sa, &sh->src[i], sh->in[i].msg_hdr.msg_namelen);
                latch->len = sh->in[i].msg_hdr.msg_namelen;
            } else if (!addr_eq(&latch->sa, &sh->src[i])) {
                here->strangers++;
                sh->packets_dropped++;
                continue;
            }
            here->last_rx = now;
            int rtcp = kind == KIND_RTCP || is_rtcp_payload(p, len);
            if (rtcp) {
                here->rtcp_packets_in++;
            } else {
                here->rtp_packets_in++;
                here->rtp_bytes_in += len;
                if (st->tap || (len > 1 && (int)(p[1] & 0x7f) == st->tap_pt))
                    tap_append(sh, st->id, side, now, p, len);
            }
            if (!there->forward)
                continue;
            const struct addr *dest = there->latched[kind].len ? &there->latched[kind] : &there->sdp[kind];
            if (dest->len == 0) {
                there->send_errors++;
                sh->packets_dropped++;
                continue;
            }
            sh->iov[i].iov_len = len;
            struct msghdr *o = &sh->out[m].msg_hdr;
            o->msg_name = (void *)&dest->sa;
            o->msg_namelen = dest->len;
            o->msg_iov = &sh->iov[i];
            o->msg_iovlen = 1;
            o->msg_control = NULL;
            o->msg_controllen = 0;
            o->msg_flags = 0;
            sh->out_rtcp[m] = (unsigned char)rtcp;
            m++;
        }
        tap_flush(sh);
        if (m > 0)
            send_batch(sh, there, there->fd[kind], m);
        if (n < BATCH)
            break;
    }
}

static void *shard_main(void *arg) {
    struct shard *sh = arg;
    struct relay *r = sh->relay;
    struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(sh->epfd, evs, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        for (int i = 0; i < n; i++) {
            uint64_t c = evs[i].data.u64;
            if (c == WAKE_COOKIE) {
                uint64_t v;
                if (read(sh->wakefd, &v, sizeof v) < 0) { /* nothing to do: stopping is the signal */
                }
                if (atomic_load(&r->stopping))
                    return NULL;
                continue;
            }
            pthread_mutex_lock(&sh->mu);
            struct stream *st = lookup(sh, (uint32_t)(c >> 2) & ((1u << SLOT_BITS) - 1), (uint32_t)(c >> 32));
            if (st != NULL)
                drain(sh, st, (int)(c >> 1) & 1, (int)c & 1);
            pthread_mutex_unlock(&sh->mu);
            while (atomic_load_explicit(&sh->ctl_waiting, memory_order_relaxed) > 0)
                sched_yield();
        }
        if (r->coalesce_ns > 0 && n < MAX_EVENTS) {
            struct timespec ts = {.tv_sec = r->coalesce_ns / 1000000000L, .tv_nsec = r->coalesce_ns % 1000000000L};
            nanosleep(&ts, NULL);
        }
    }
    return NULL;
}

/* ---- lifecycle ------------------------------------------------------------------------------ */

static void close_stream_fds(struct shard *sh, struct stream *st) {
    for (int s = 0; s < 2; s++)
        for (int k = 0; k < 2; k++) {
            epoll_ctl(sh->epfd, EPOLL_CTL_DEL, st->side[s].fd[k], NULL);
            close(st->side[s].fd[k]);
        }
}

int relay_abi_version(void) { return RELAY_ABI_VERSION; }

void relay_destroy(struct relay *r);

/* Start nshards relay threads. Takes ownership of tap_fd (a connected datagram socket) on
 * success. coalesce_us > 0: after a pass that found the thread not saturated, sleep that long
 * before waiting again, so that packets are picked up in batches instead of one wake-up each.
 * Returns NULL with *err = errno on failure. */
struct relay *relay_create(int nshards, int tap_fd, int coalesce_us, int *err) {
    if (nshards < 1 || nshards > MAX_SHARDS || coalesce_us < 0 || coalesce_us > 100000) {
        *err = EINVAL;
        return NULL;
    }
    struct relay *r = calloc(1, sizeof *r + (size_t)nshards * sizeof(struct shard));
    if (r == NULL) {
        *err = ENOMEM;
        return NULL;
    }
    r->nshards = nshards;
    r->coalesce_ns = coalesce_us * 1000L;
    r->tap_fd = tap_fd;
    atomic_init(&r->stopping, 0);
    for (int i = 0; i < nshards; i++) {
        struct shard *sh = &r->shards[i];
        sh->relay = r;
        sh->index = i;
        sh->epfd = sh->wakefd = -1;
        pthread_mutex_init(&sh->mu, NULL);
        atomic_init(&sh->ctl_waiting, 0);
    }
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old); /* relay threads inherit it: signals go to Python */
    int e = 0;
    for (int i = 0; i < nshards && e == 0; i++) {
        struct shard *sh = &r->shards[i];
        sh->bufs = malloc((size_t)BATCH * BUF_SIZE);
        sh->tap_buf = malloc(TAP_CHUNK);
        sh->epfd = epoll_create1(EPOLL_CLOEXEC);
        sh->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (sh->bufs == NULL || sh->tap_buf == NULL) {
            e = ENOMEM;
            break;
        }
        if (sh->epfd < 0 || sh->wakefd < 0) {
            e = errno;
            break;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = WAKE_COOKIE};
        if (epoll_ctl(sh->epfd, EPOLL_CTL_ADD, sh->wakefd, &ev) < 0) {
            e = errno;
            break;
        }
        int rc = pthread_create(&sh->thread, NULL, shard_main, sh);
        if (rc != 0) {
            e = rc;
            break;
        }
        sh->thread_started = 1;
        char name[16];
        snprintf(name, sizeof name, "pbx-relay-%d", i);
        pthread_setname_np(sh->thread, name);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (e != 0) {
        r->tap_fd = -1; /* on failure tap_fd stays the caller's */
        relay_destroy(r);
        *err = e;
        return NULL;
    }
    return r;
}

/* Stop the threads, close every stream's sockets and the tap socket, free everything. */
void relay_destroy(struct relay *r) {
    if (r == NULL)
        return;
    atomic_store(&r->stopping, 1);
    for (int i = 0; i < r->nshards; i++) {
        struct shard *sh = &r->shards[i];
        if (sh->thread_started) {
            uint64_t one = 1;
            if (write(sh->wakefd, &one, sizeof one) < 0) { /* eventfd cannot be full here */
            }
            pthread_join(sh->thread, NULL);
        }
    }
    for (int i = 0; i < r->nshards; i++) {
        struct shard *sh = &r->shards[i];
        for (uint32_t s = 0; s < sh->nslots; s++)
            if (sh->slots[s].stream != NULL) {
                close_stream_fds(sh, sh->slots[s].stream);
                free(sh->slots[s].stream);
            }
        if (sh->epfd >= 0)
            close(sh->epfd);
        if (sh->wakefd >= 0)
            close(sh->wakefd);
        pthread_mutex_destroy(&sh->mu);
        free(sh->slots);
        free(sh->free_slots);
        free(sh->bufs);
        free(sh->tap_buf);
    }
    if (r->tap_fd >= 0)
        close(r->tap_fd);
    free(r);
}

/* ---- control -------------------------------------------------------------------------------- */

static int alloc_slot(struct shard *sh, uint32_t *slot) {
    if (sh->nfree > 0) {
        *slot = sh->free_slots[--sh->nfree];
        return 0;
    }
    if (sh->nslots == sh->cap) {
        uint32_t cap = sh->cap ? sh->cap * 2 : 64;
        if (cap > (1u << SLOT_BITS))
            return ENOSPC;
        struct slot *slots = realloc(sh->slots, cap * sizeof *slots);
        if (slots == NULL)
            return ENOMEM;
        sh->slots = slots;
        uint32_t *fr = realloc(sh->free_slots, cap * sizeof *fr);
        if (fr == NULL)
            return ENOMEM;
        sh->free_slots = fr;
        for (uint32_t i = sh->cap; i < cap; i++) {
            sh->slots[i].stream = NULL;
            sh->slots[i].gen = 1;
        }
        sh->cap = cap;
    }
    *slot = sh->nslots++;
    return 0;
}

/* Add a stream; fds = {a_rtp, a_rtcp, b_rtp, b_rtcp}. Takes ownership of the fds only on success.
 * Returns a handle (>= 0) or -errno. */
int64_t relay_add(struct relay *r, uint64_t stream_id, const int *fds) {
    if (r == NULL)
        return -EINVAL;
    int shard = (int)(stream_id % (uint64_t)r->nshards);
    struct shard *sh = &r->shards[shard];
    struct stream *st = calloc(1, sizeof *st);
    if (st == NULL)
        return -ENOMEM;
    st->id = stream_id;
    st->tap_pt = -1;
    for (int s = 0; s < 2; s++) {
        st->side[s].fd[KIND_RTP] = fds[2 * s];
        st->side[s].fd[KIND_RTCP] = fds[2 * s + 1];
        st->side[s].forward = 1;
        st->side[s].last_rx = -1.0;
    }
    ctl_lock(sh);
    uint32_t slot;
    int e = alloc_slot(sh, &slot);
    if (e != 0) {
        pthread_mutex_unlock(&sh->mu);
        free(st);
        return -e;
    }
    uint32_t gen = sh->slots[slot].gen;
    int added = 0;
    for (; added < 4; added++) {
        int s = added >> 1, k = added & 1;
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = make_cookie(gen, slot, s, k)};
        if (epoll_ctl(sh->epfd, EPOLL_CTL_ADD, st->side[s].fd[k], &ev) < 0) {
            e = errno;
            break;
        }
    }
    if (e != 0) {
        for (int i = 0; i < added; i++)
            epoll_ctl(sh->epfd, EPOLL_CTL_DEL, st->side[i >> 1].fd[i & 1], NULL);
        sh->free_slots[sh->nfree++] = slot;
        pthread_mutex_unlock(&sh->mu);
        free(st);
        return -e;
    }
    sh->slots[slot].stream = st;
    sh->streams++;
    pthread_mutex_unlock(&sh->mu);
    return (int64_t)make_handle(gen, shard, slot);
}

/* Remove a stream and close its fds; when this returns the relay thread cannot touch it again. */
int relay_remove(struct relay *r, uint64_t handle) {
    struct shard *sh;
    struct stream *st = lock_handle(r, handle, &sh);
    if (st == NULL)
        return -ENOENT;
    uint32_t slot = (uint32_t)handle & ((1u << SLOT_BITS) - 1);
    close_stream_fds(sh, st);
    sh->slots[slot].stream = NULL;
    sh->slots[slot].gen = (sh->slots[slot].gen + 1) & 0x7fffffffu;
    sh->free_slots[sh->nfree++] = slot;
    sh->streams--;
    pthread_mutex_unlock(&sh->mu);
    free(st);
    return 0;
}

/* The SDP address of side's peer for kind (RTP or RTCP); len 0 means none. A changed address
 * clears the latch of that socket. */
int relay_set_remote(struct relay *r, uint64_t handle, int side, int kind, const void *sa, uint32_t len) {
    if (side < 0 || side > 1 || kind < 0 || kind > 1 || len > sizeof(struct sockaddr_storage))
        return -EINVAL;
    struct addr a = {.len = len};
    if (len > 0)
        memcpy(&a.sa, sa, len);
    struct shard *sh;
    struct stream *st = lock_handle(r, handle, &sh);
    if (st == NULL)
        return -ENOENT;
    struct side *sd = &st->side[side];
    if (!addr_same(&sd->sdp[kind], &a))
        sd->latched[kind].len = 0;
    sd->sdp[kind] = a;
    pthread_mutex_unlock(&sh->mu);
    return 0;
}

int relay_set_forwarding(struct relay *r, uint64_t handle, int to_side, int enabled) {
    if (to_side < 0 || to_side > 1)
        return -EINVAL;
    struct shard *sh;
    struct stream *st = lock_handle(r, handle, &sh);
    if (st == NULL)
        return -ENOENT;
    st->side[to_side].forward = enabled != 0;
    pthread_mutex_unlock(&sh->mu);
    return 0;
}

int relay_set_tap(struct relay *r, uint64_t handle, int enabled, int payload_type) {
    struct shard *sh;
    struct stream *st = lock_handle(r, handle, &sh);
    if (st == NULL)
        return -ENOENT;
    st->tap = enabled != 0;
    st->tap_pt = payload_type;
    pthread_mutex_unlock(&sh->mu);
    return 0;
}

/* Injection: send data from to_side's RTP or RTCP socket to that side's peer.
 * Returns 1 when sent, 0 when there is no destination or the send failed, -ENOENT if unknown. */
int relay_send(struct relay *r, uint64_t handle, int to_side, int rtcp, const void *data, uint32_t len) {
    if (to_side < 0 || to_side > 1)
        return -EINVAL;
    struct shard *sh;
    struct stream *st = lock_handle(r, handle, &sh);
    if (st == NULL)
        return -ENOENT;
    int kind = rtcp ? KIND_RTCP : KIND_RTP;
    struct side *there = &st->side[to_side];
    const struct addr *dest = there->latched[kind].len ? &there->latched[kind] : &there->sdp[kind];
    int ok = 0;
    if (dest->len > 0) {
        ssize_t n;
        do
            n = sendto(there->fd[kind], data, len, MSG_DONTWAIT | MSG_NOSIGNAL,
                       (const struct sockaddr *)&dest->sa, dest->len);
        while (n < 0 && errno == EINTR);
        ok = n >= 0;
    }
    if (ok) {
        count_out(sh, there, rtcp || is_rtcp_payload(data, len), len, 0);
    } else {
        there->send_errors++;
        sh->packets_dropped++;
    }
    pthread_mutex_unlock(&sh->mu);
    return ok;
}

int relay_stream_stats(struct relay *r, uint64_t handle, struct relay_stream_stats *out) {
    struct shard *sh;
    struct stream *st = lock_handle(r, handle, &sh);
    if (st == NULL)
        return -ENOENT;
    for (int s = 0; s < 2; s++) {
        const struct side *sd = &st->side[s];
        struct relay_side_stats *o = &out->side[s];
        o->rtp_packets_in = sd->rtp_packets_in;
        o->rtp_bytes_in = sd->rtp_bytes_in;
        o->rtcp_packets_in = sd->rtcp_packets_in;
        o->rtp_packets_out = sd->rtp_packets_out;
        o->rtp_bytes_out = sd->rtp_bytes_out;
        o->rtcp_packets_out = sd->rtcp_packets_out;
        o->strangers = sd->strangers;
        o->send_errors = sd->send_errors;
        o->last_rx = sd->last_rx;
        addr_format(&sd->latched[KIND_RTP], o->rtp_latched_host, sizeof o->rtp_latched_host,
                    &o->rtp_latched_port);
        addr_format(&sd->latched[KIND_RTCP], o->rtcp_latched_host, sizeof o->rtcp_latched_host,
                    &o->rtcp_latched_port);
    }
    pthread_mutex_unlock(&sh->mu);
    return 0;
}

void relay_stats(struct relay *r, struct relay_engine_stats *out) {
    memset(out, 0, sizeof *out);
    if (r == NULL)
        return;
    for (int i = 0; i < r->nshards; i++) {
        struct shard *sh = &r->shards[i];
        ctl_lock(sh);
        out->streams += sh->streams;
        out->packets_relayed += sh->packets_relayed;
        out->bytes_relayed += sh->bytes_relayed;
        out->packets_dropped += sh->packets_dropped;
        out->tap_drops += sh->tap_drops;
        pthread_mutex_unlock(&sh->mu);
    }
}

/* CPU seconds used so far by a shard's thread (for benchmarks); -1 if unknown. */
double relay_thread_cpu(struct relay *r, int shard) {
    if (r == NULL || shard < 0 || shard >= r->nshards || !r->shards[shard].thread_started)
        return -1.0;
    clockid_t cid;
    struct timespec ts;
    if (pthread_getcpuclockid(r->shards[shard].thread, &cid) != 0 || clock_gettime(cid, &ts) != 0)
        return -1.0;
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
