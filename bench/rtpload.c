/*
 * rtpload: a paced, timestamped RTP load generator for bench/relay.py.
 *
 * Every "call end" is one UDP socket bound to its own address. An end sends RATE packets/s of
 * 12-byte RTP header (V=2, PT=0) + PAYLOAD bytes to its destination and receives the other end's
 * packets (directly, or through a relay). Ends are paced on one schedule: end k of E sends at
 * t0 + k * period / E + seq * period, so sends are spread evenly over the period instead of all
 * calls firing in the same millisecond.
 *
 * The payload starts with a magic, the run id, call index, direction, sequence number and the
 * CLOCK_MONOTONIC time (ns) taken just before the send. The receiver takes the arrival time from
 * the kernel's receive timestamp (SO_TIMESTAMPNS, CLOCK_REALTIME, mapped onto CLOCK_MONOTONIC with
 * an offset re-sampled every 100 ms), so the figure is send -> arrival in the far end's socket,
 * not counting when this process gets round to reading it. (--clock user takes clock_gettime after
 * recvmmsg instead, which adds up to one tick.)
 *
 * One thread, woken once per --tick-us (default 200 us) whatever the packet rate: on each tick it
 * reads every socket epoll reports readable (recvmmsg, up to 8 packets a call) and sends every
 * packet due before the next tick (so up to one tick early; the timestamp is the real send time).
 * A wake-up per packet would cost more CPU than the packets on a small VM, and the generator
 * shares the cores with the relay it measures. Each end sends one packet per period from its own
 * socket, so there is nothing for sendmmsg to batch: sends are one sendto each.
 *
 * Only packets sent after the warm-up are counted. After the last send the receivers keep reading
 * for the drain period: packets that arrive after the last send are counted as received and
 * "late". Whatever was sent and has not arrived by the end of the drain is lost. Packets from
 * another run (run id), for another call end ("misrouted") or repeated ("dup") are counted apart.
 *
 * Input (--config FILE, or stdin): one call end per line, '#' starts a comment:
 *     CALL DIR LOCAL_IP LOCAL_PORT DEST_IP DEST_PORT
 * DIR 0 is the caller's end (it sends direction 0 and receives direction 1), DIR 1 the callee's.
 *
 * Output (stdout, one record per line, flushed as it goes):
 *     ready T0_NS ENDS             sockets bound, schedule starts at T0 (CLOCK_MONOTONIC ns)
 *     warm                         the warm-up is over: the measured window starts
 *     end                          the last packet was sent: the drain starts
 *     dir D sent S recv R late L dup U misrouted M stale X
 *     sendlag max_ns N over1ms C   how far behind schedule the sender got
 *     errors send E recv R bad B   socket errors, malformed packets
 *     hist LO_NS WIDTH_NS COUNT    latency histogram bins with COUNT > 0 (both directions)
 *     negative N                   samples below zero (clock mapping), counted in the first bin
 *     done
 *
 * Build: cc -O2 -Wall -Wextra -o rtpload rtpload.c
 * All addresses come from the config; bench/relay.py passes only 127.0.0.0/8 ones.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAGIC 0x524c4231u /* "RLB1" */
#define RTP_HEADER 12
#define MAX_PACKET 2048
#define RECV_BATCH 8
#define MAX_EVENTS 512
#define FINE_BINS 20000        /* 1 us bins up to 20 ms */
#define FINE_WIDTH 1000LL
#define COARSE_BINS 10000      /* then 1 ms bins up to 10 s */
#define COARSE_WIDTH 1000000LL

struct end {
    int fd;
    uint32_t call;
    uint32_t dir;
    struct sockaddr_in dest;
    uint32_t seq;      /* next sequence number to send */
    uint32_t ssrc;
    uint8_t *seen;     /* bitmap of received sequence numbers of the direction this end receives */
};

struct payload {
    uint32_t magic;
    uint32_t run_id;
    uint32_t call;
    uint32_t dir;
    uint32_t seq;
    uint32_t pad;
    int64_t tx_ns;
};

struct dir_stats {
    uint64_t sent, recv, late, dup, misrouted, stale;
};

static struct end *ends;
static size_t n_ends;
static struct dir_stats dstats[2];
static uint64_t hist_fine[FINE_BINS];
static uint64_t hist_coarse[COARSE_BINS];
static uint64_t hist_over, negative;
static int64_t hist_over_max;
static uint64_t send_errors, recv_errors, bad_packets;
static int64_t max_lag, t_warm_ns, t_stop_ns;
static uint64_t lag_over_1ms;
static uint32_t warm_seq, max_seq;
static uint32_t run_id;
static int use_kernel_clock = 1;
static int64_t rt_offset; /* CLOCK_REALTIME - CLOCK_MONOTONIC, ns */

static int64_t now_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void sample_offset(void) {
    /* the tightest of three (monotonic, realtime, monotonic) brackets */
    int64_t best_span = INT64_MAX;
    for (int i = 0; i < 3; i++) {
        int64_t a = now_ns(CLOCK_MONOTONIC);
        int64_t r = now_ns(CLOCK_REALTIME);
        int64_t b = now_ns(CLOCK_MONOTONIC);
        if (b - a < best_span) {
            best_span = b - a;
            rt_offset = r - (a + (b - a) / 2);
        }
    }
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void read_config(FILE *in) {
    size_t cap = 1024;
    char line[512];
    ends = calloc(cap, sizeof *ends);
    if (!ends)
        die("calloc");
    while (fgets(line, sizeof line, in)) {
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        unsigned call, dir, lport, dport;
        char lip[64], dip[64];
        int got = sscanf(line, "%u %u %63s %u %63s %u", &call, &dir, lip, &lport, dip, &dport);
        if (got <= 0)
            continue;
        if (got != 6 || dir > 1 || lport > 65535 || dport > 65535) {
            fprintf(stderr, "rtpload: bad config line: %s\n", line);
            exit(2);
        }
        if (n_ends == cap) {
            cap *= 2;
            ends = realloc(ends, cap * sizeof *ends);
            if (!ends)
                die("realloc");
        }
        struct end *e = &ends[n_ends++];
        memset(e, 0, sizeof *e);
        e->call = call;
        e->dir = dir;
        e->ssrc = 0x10000000u ^ (call * 2654435761u) ^ (dir << 31);
        e->dest.sin_family = AF_INET;
        e->dest.sin_port = htons((uint16_t)dport);
        if (inet_pton(AF_INET, dip, &e->dest.sin_addr) != 1) {
            fprintf(stderr, "rtpload: bad destination address %s\n", dip);
            exit(2);
        }
        struct sockaddr_in local = {.sin_family = AF_INET, .sin_port = htons((uint16_t)lport)};
        if (inet_pton(AF_INET, lip, &local.sin_addr) != 1) {
            fprintf(stderr, "rtpload: bad local address %s\n", lip);
            exit(2);
        }
        if ((ntohl(local.sin_addr.s_addr) >> 24) != 127 || (ntohl(e->dest.sin_addr.s_addr) >> 24) != 127) {
            fprintf(stderr, "rtpload: only 127.0.0.0/8 addresses are allowed (%s -> %s)\n", lip, dip);
            exit(2);
        }
        e->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (e->fd < 0)
            die("socket");
        int one = 1;
        if (use_kernel_clock && setsockopt(e->fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one) < 0)
            die("setsockopt SO_TIMESTAMPNS");
        if (bind(e->fd, (struct sockaddr *)&local, sizeof local) < 0) {
            fprintf(stderr, "rtpload: bind %s:%u: %s\n", lip, lport, strerror(errno));
            exit(2);
        }
    }
    if (n_ends == 0) {
        fprintf(stderr, "rtpload: no call ends in the config\n");
        exit(2);
    }
}

static void alloc_seen(size_t seen_bytes) {
    for (size_t i = 0; i < n_ends; i++) {
        ends[i].seen = calloc(seen_bytes, 1);
        if (!ends[i].seen)
            die("calloc");
    }
}

static void record_latency(int64_t lat) {
    if (lat < 0) {
        negative++;
        lat = 0;
    }
    if (lat < FINE_BINS * FINE_WIDTH) {
        hist_fine[lat / FINE_WIDTH]++;
    } else if (lat < FINE_BINS * FINE_WIDTH + COARSE_BINS * COARSE_WIDTH) {
        hist_coarse[(lat - FINE_BINS * FINE_WIDTH) / COARSE_WIDTH]++;
    } else {
        hist_over++;
        if (lat > hist_over_max)
            hist_over_max = lat;
    }
}

static void handle_packet(struct end *at, const uint8_t *buf, ssize_t len, int64_t rx_ns) {
    struct payload p;
    if (len < RTP_HEADER + (ssize_t)sizeof p || (buf[0] & 0xc0) != 0x80) {
        bad_packets++;
        return;
    }
    memcpy(&p, buf + RTP_HEADER, sizeof p);
    if (p.magic != MAGIC || p.dir > 1) {
        bad_packets++;
        return;
    }
    struct dir_stats *ds = &dstats[p.dir];
    if (p.run_id != run_id) {
        ds->stale++;
        return;
    }
    if (p.call != at->call || p.dir == at->dir) {
        ds->misrouted++; /* a relay crossed two calls' media, or echoed a stream back */
        return;
    }
    if (p.seq < warm_seq || p.seq >= max_seq)
        return;
    uint8_t bit = (uint8_t)(1u << (p.seq & 7));
    if (at->seen[p.seq >> 3] & bit) {
        ds->dup++;
        return;
    }
    at->seen[p.seq >> 3] |= bit;
    ds->recv++;
    if (rx_ns >= t_stop_ns)
        ds->late++;
    record_latency(rx_ns - p.tx_ns);
}

static void receive_all(struct end *e) {
    static uint8_t bufs[RECV_BATCH][MAX_PACKET];
    static char cbufs[RECV_BATCH][CMSG_SPACE(sizeof(struct timespec)) + 64];
    struct mmsghdr msgs[RECV_BATCH];
    struct iovec iovs[RECV_BATCH];
    for (;;) {
        for (int i = 0; i < RECV_BATCH; i++) {
            iovs[i].iov_base = bufs[i];
            iovs[i].iov_len = MAX_PACKET;
            memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
            msgs[i].msg_hdr.msg_iov = &iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_control = cbufs[i];
            msgs[i].msg_hdr.msg_controllen = sizeof cbufs[i];
        }
        int n = recvmmsg(e->fd, msgs, RECV_BATCH, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                recv_errors++; /* e.g. ECONNREFUSED from an ICMP port unreachable */
            return;
        }
        int64_t user_rx = now_ns(CLOCK_MONOTONIC);
        for (int i = 0; i < n; i++) {
            int64_t rx = user_rx;
            if (use_kernel_clock) {
                for (struct cmsghdr *c = CMSG_FIRSTHDR(&msgs[i].msg_hdr); c;
                     c = CMSG_NXTHDR(&msgs[i].msg_hdr, c)) {
                    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
                        struct timespec ts;
                        memcpy(&ts, CMSG_DATA(c), sizeof ts);
                        rx = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec - rt_offset;
                    }
                }
            }
            handle_packet(e, bufs[i], (ssize_t)msgs[i].msg_len, rx);
        }
        if (n < RECV_BATCH)
            return;
    }
}

static void send_one(struct end *e, uint32_t payload_len, int64_t due) {
    uint8_t buf[MAX_PACKET];
    uint32_t seq = e->seq++;
    memset(buf + RTP_HEADER, 0xff, payload_len); /* G.711 mu-law silence */
    buf[0] = 0x80;
    buf[1] = (uint8_t)(seq == 0 ? 0x80 : 0x00); /* marker on the first packet, PT 0 (PCMU) */
    buf[2] = (uint8_t)(seq >> 8);
    buf[3] = (uint8_t)seq;
    uint32_t ts = seq * payload_len;
    buf[4] = (uint8_t)(ts >> 24);
    buf[5] = (uint8_t)(ts >> 16);
    buf[6] = (uint8_t)(ts >> 8);
    buf[7] = (uint8_t)ts;
    buf[8] = (uint8_t)(e->ssrc >> 24);
    buf[9] = (uint8_t)(e->ssrc >> 16);
    buf[10] = (uint8_t)(e->ssrc >> 8);
    buf[11] = (uint8_t)e->ssrc;
    struct payload p = {.magic = MAGIC, .run_id = run_id, .call = e->call, .dir = e->dir, .seq = seq};
    p.tx_ns = now_ns(CLOCK_MONOTONIC);
    memcpy(buf + RTP_HEADER, &p, sizeof p);
    int64_t lag = p.tx_ns - due;
    if (seq >= warm_seq) {
        if (lag > max_lag)
            max_lag = lag;
        if (lag > 1000000)
            lag_over_1ms++;
    }
    ssize_t r = sendto(e->fd, buf, RTP_HEADER + payload_len, 0, (struct sockaddr *)&e->dest, sizeof e->dest);
    if (r < 0)
        send_errors++;
    else if (seq >= warm_seq)
        dstats[e->dir].sent++;
}

static void usage(void) {
    fprintf(stderr,
            "usage: rtpload [--config FILE] [--duration S] [--warmup S] [--drain S] [--rate PPS]\n"
            "               [--payload BYTES] [--start-delay S] [--run-id N] [--clock kernel|user]\n"
            "               [--tick-us US]\n"
            "config lines: CALL DIR LOCAL_IP LOCAL_PORT DEST_IP DEST_PORT (127.0.0.0/8 only)\n");
    exit(2);
}

int main(int argc, char **argv) {
    double duration = 5.0, warmup = 1.0, drain = 0.5, start_delay = 0.05;
    unsigned rate = 50, payload_len = 160;
    int64_t tick_ns = 200000;
    const char *config = NULL;
    run_id = (uint32_t)getpid();
    static const struct option opts[] = {
        {"config", required_argument, 0, 'c'},   {"duration", required_argument, 0, 'd'},
        {"warmup", required_argument, 0, 'w'},   {"drain", required_argument, 0, 'D'},
        {"rate", required_argument, 0, 'r'},     {"payload", required_argument, 0, 'p'},
        {"start-delay", required_argument, 0, 's'}, {"run-id", required_argument, 0, 'i'},
        {"clock", required_argument, 0, 'k'},    {"tick-us", required_argument, 0, 't'},
        {0, 0, 0, 0},
    };
    int opt;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'c': config = optarg; break;
        case 'd': duration = atof(optarg); break;
        case 'w': warmup = atof(optarg); break;
        case 'D': drain = atof(optarg); break;
        case 'r': rate = (unsigned)atoi(optarg); break;
        case 'p': payload_len = (unsigned)atoi(optarg); break;
        case 's': start_delay = atof(optarg); break;
        case 't': tick_ns = (int64_t)(atof(optarg) * 1000); break;
        case 'i': run_id = (uint32_t)strtoul(optarg, NULL, 0); break;
        case 'k':
            if (strcmp(optarg, "kernel") == 0)
                use_kernel_clock = 1;
            else if (strcmp(optarg, "user") == 0)
                use_kernel_clock = 0;
            else
                usage();
            break;
        default: usage();
        }
    }
    if (duration <= 0 || duration > 600 || warmup < 0 || warmup > 60 || drain < 0 || drain > 30 ||
        rate < 1 || rate > 1000 || tick_ns < 10000 || tick_ns > 10000000 ||
        payload_len < sizeof(struct payload) || payload_len > 1400)
        usage();
    /* a hard bound: this process ends by itself whatever happens to its parent */
    alarm((unsigned)(start_delay + warmup + duration + drain) + 30);
    signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    raise_nofile();

    FILE *in = stdin;
    if (config && !(in = fopen(config, "r")))
        die(config);
    read_config(in);
    if (in != stdin)
        fclose(in);

    int64_t period = 1000000000LL / rate;
    warm_seq = (uint32_t)(warmup * rate + 0.5);
    max_seq = (uint32_t)((warmup + duration) * rate + 0.5);
    alloc_seen((max_seq >> 3) + 1);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN};
    for (size_t i = 0; i < n_ends; i++) {
        ev.data.ptr = &ends[i];
        if (epoll_ctl(ep, EPOLL_CTL_ADD, ends[i].fd, &ev) < 0)
            die("epoll_ctl");
    }

    sample_offset();
    int64_t t0 = now_ns(CLOCK_MONOTONIC) + (int64_t)(start_delay * 1e9);
    t_warm_ns = t0 + (int64_t)warm_seq * period;
    t_stop_ns = t0 + (int64_t)max_seq * period; /* the first send time not used */
    int64_t t_drain_end = t_stop_ns + (int64_t)(drain * 1e9);
    int64_t next_offset_sample = t0;
    printf("ready %lld %zu\n", (long long)t0, n_ends);
    fflush(stdout);

    /*
     * One wake-up per tick, whatever the packet rate: read every socket that has data (arrival
     * times come from the kernel's timestamps, so reading late does not change them), then send
     * every packet due before the next tick. Ends are visited cyclically in index order; end k's
     * i-th send is due at t0 + k*period/E + i*period.
     */
    size_t cursor = 0;
    uint64_t round = 0;
    int warm_said = 0, end_said = 0;
    struct epoll_event events[MAX_EVENTS];
    int64_t tick_at = t0;
    for (;;) {
        struct timespec wake = {.tv_sec = tick_at / 1000000000LL, .tv_nsec = tick_at % 1000000000LL};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &wake, NULL) == EINTR)
            ;
        int64_t now = now_ns(CLOCK_MONOTONIC);
        if (now >= next_offset_sample) {
            sample_offset();
            next_offset_sample = now + 100000000LL;
        }
        int n;
        do {
            n = epoll_wait(ep, events, MAX_EVENTS, 0);
            if (n < 0 && errno != EINTR)
                die("epoll_wait");
            for (int i = 0; i < n; i++)
                receive_all(events[i].data.ptr);
        } while (n == MAX_EVENTS);
        while (!end_said) {
            int64_t due = t0 + (int64_t)round * period + (int64_t)cursor * period / (int64_t)n_ends;
            if (due >= t_stop_ns) {
                puts("end");
                fflush(stdout);
                end_said = 1;
                break;
            }
            if (due >= now + tick_ns)
                break;
            send_one(&ends[cursor], payload_len, due);
            if (++cursor == n_ends) {
                cursor = 0;
                round++;
            }
        }
        if (!warm_said && now >= t_warm_ns) {
            puts("warm");
            fflush(stdout);
            warm_said = 1;
        }
        if (end_said && now >= t_drain_end)
            break;
        now = now_ns(CLOCK_MONOTONIC);
        while (tick_at <= now)
            tick_at += tick_ns;
    }

    for (int d = 0; d < 2; d++) {
        struct dir_stats *s = &dstats[d];
        printf("dir %d sent %llu recv %llu late %llu dup %llu misrouted %llu stale %llu\n", d,
               (unsigned long long)s->sent, (unsigned long long)s->recv, (unsigned long long)s->late,
               (unsigned long long)s->dup, (unsigned long long)s->misrouted, (unsigned long long)s->stale);
    }
    printf("sendlag max_ns %lld over1ms %llu\n", (long long)max_lag, (unsigned long long)lag_over_1ms);
    printf("errors send %llu recv %llu bad %llu\n", (unsigned long long)send_errors,
           (unsigned long long)recv_errors, (unsigned long long)bad_packets);
    for (int i = 0; i < FINE_BINS; i++)
        if (hist_fine[i])
            printf("hist %lld %lld %llu\n", (long long)(i * FINE_WIDTH), (long long)FINE_WIDTH,
                   (unsigned long long)hist_fine[i]);
    for (int i = 0; i < COARSE_BINS; i++)
        if (hist_coarse[i])
            printf("hist %lld %lld %llu\n", (long long)(FINE_BINS * FINE_WIDTH + i * COARSE_WIDTH),
                   (long long)COARSE_WIDTH, (unsigned long long)hist_coarse[i]);
    if (hist_over)
        printf("hist %lld %lld %llu\n", (long long)(FINE_BINS * FINE_WIDTH + COARSE_BINS * COARSE_WIDTH),
               (long long)(hist_over_max - (FINE_BINS * FINE_WIDTH + COARSE_BINS * COARSE_WIDTH) + 1),
               (unsigned long long)hist_over);
    printf("negative %llu\n", (unsigned long long)negative);
    puts("done");
    fflush(stdout);
    return 0;
}
