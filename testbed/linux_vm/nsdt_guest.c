/* nsdt-guest: the testbed's tiny in-guest helper (static, no libc beyond syscalls' wrappers).
 *
 * Subcommands (all print one-line "@<tag> key=value ..." records on stdout, the console):
 *   mount SOURCE TARGET OPTIONS       mount(2) of type "nfs" with a text option string (busybox's
 *                                     mount has no NFS helper); prints "@mount ok" or
 *                                     "@mount fail errno=N err=NAME"
 *   sampler DEV INTERVAL_MS           mlockall, oom_score_adj -1000; every INTERVAL_MS writes
 *                                     /proc/{vmstat,zoneinfo,net/netstat,net/snmp,net/sockstat,
 *                                     net/rpc/nfs} to
 *                                     DEV (a serial port: no guest allocation to read it), framed as
 *                                     ">>> SEQ UPTIME_MS NAME\n<contents><<<\n"; fds kept open so
 *                                     seq_file buffers are reused
 *   noise PORT_BASE N RCVBUF          N UDP sockets on PORT_BASE.., SO_RCVBUFFORCE RCVBUF, never read
 *   workload PAGES SEED               anonymous pages, each stamped (seed, index, pattern), then each
 *                                     checked for residency (mincore) and verified; prints
 *                                     "@workload allocated=N" progress and
 *                                     "@workload done pages=N verified=N bad=N swapped_in=N ..."
 *   mmapfile PATH PAGES SEED          MAP_SHARED writeback to a file: stamp, msync, verify
 *   neigh IFNAME IP MAC               a permanent ARP entry (SIOCSARP; busybox ip has no neigh add),
 *                                     as the runner gives the agent --neigh: a host that cannot answer
 *                                     ARP under pressure must not be a second way to stall
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <net/if_arp.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define MAGIC 0x6e73647470616765ULL /* "nsdtpage" */

static uint64_t mix(uint64_t x) { /* splitmix64 finaliser */
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* A page: [MAGIC, seed, index, then words mix(seed ^ index<<24 ^ i)]. */
static void stamp(uint64_t *w, uint64_t seed, uint64_t index) {
    uint64_t base = seed ^ (index << 24);
    w[0] = MAGIC; w[1] = seed; w[2] = index;
    for (int i = 3; i < PAGE / 8; i++) w[i] = mix(base ^ (uint64_t)i);
}

static int check(const uint64_t *w, uint64_t seed, uint64_t index) {
    uint64_t base = seed ^ (index << 24);
    if (w[0] != MAGIC || w[1] != seed || w[2] != index) return 0;
    for (int i = 3; i < PAGE / 8; i++) if (w[i] != mix(base ^ (uint64_t)i)) return 0;
    return 1;
}

static void protect_self(void) {
    int fd = open("/proc/self/oom_score_adj", O_WRONLY);
    if (fd >= 0) { if (write(fd, "-1000", 5) < 0) {} close(fd); }
}

static int cmd_mount(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: mount SOURCE TARGET OPTIONS\n"); return 2; }
    mkdir(argv[3], 0755);
    if (mount(argv[2], argv[3], "nfs", 0, argv[4]) == 0) { printf("@mount ok\n"); return 0; }
    int e = errno;
    printf("@mount fail errno=%d err=%s\n", e, strerrorname_np(e) ? strerrorname_np(e) : "?");
    return 1;
}

static const char *FILES[][2] = {
    {"vmstat", "/proc/vmstat"}, {"zoneinfo", "/proc/zoneinfo"}, {"netstat", "/proc/net/netstat"},
    {"snmp", "/proc/net/snmp"}, {"sockstat", "/proc/net/sockstat"}, {"rpc_nfs", "/proc/net/rpc/nfs"},
};
#define NFILES (sizeof FILES / sizeof FILES[0])
static char sbuf[1 << 16];
static char obuf[1 << 17];

static void write_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t k = write(fd, p, n);
        if (k < 0) { if (errno == EINTR || errno == EAGAIN) continue; return; }
        p += k; n -= (size_t)k;
    }
}

static int cmd_sampler(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: sampler DEV INTERVAL_MS\n"); return 2; }
    int out = open(argv[2], O_WRONLY | O_NOCTTY);
    if (out < 0) { printf("@sampler fail open %s errno=%d\n", argv[2], errno); return 1; }
    struct termios t;
    if (tcgetattr(out, &t) == 0) { cfmakeraw(&t); tcsetattr(out, TCSANOW, &t); }
    long interval_ms = atol(argv[3]);
    int fds[NFILES];
    for (size_t i = 0; i < NFILES; i++) fds[i] = open(FILES[i][1], O_RDONLY);
    protect_self();
    setpriority(PRIO_PROCESS, 0, -10);
    /* touch the buffers, then lock everything: sampling must not need a page fault */
    memset(sbuf, 0, sizeof sbuf); memset(obuf, 0, sizeof obuf);
    int locked = mlockall(MCL_CURRENT | MCL_FUTURE) == 0;
    printf("@sampler started dev=%s interval_ms=%ld mlocked=%d\n", argv[2], interval_ms, locked);
    fflush(stdout);
    for (unsigned long seq = 0;; seq++) {
        struct timespec ts;
        clock_gettime(CLOCK_BOOTTIME, &ts);
        long ms = ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
        size_t o = 0;
        for (size_t i = 0; i < NFILES; i++) {
            if (fds[i] < 0) fds[i] = open(FILES[i][1], O_RDONLY); /* rpc/nfs appears with the module */
            if (fds[i] < 0) continue;
            lseek(fds[i], 0, SEEK_SET);
            size_t n = 0;
            for (;;) {
                ssize_t k = read(fds[i], sbuf + n, sizeof sbuf - 1 - n);
                if (k <= 0) break;
                n += (size_t)k;
            }
            int h = snprintf(obuf + o, sizeof obuf - o, ">>> %lu %ld %s\n", seq, ms, FILES[i][0]);
            o += (size_t)h;
            if (o + n + 8 < sizeof obuf) { memcpy(obuf + o, sbuf, n); o += n; }
            memcpy(obuf + o, "<<<\n", 4); o += 4;
        }
        write_all(out, obuf, o);
        struct timespec d = {interval_ms / 1000, (interval_ms % 1000) * 1000000L};
        while (nanosleep(&d, &d) && errno == EINTR) {}
    }
}

static int cmd_noise(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: noise PORT_BASE N RCVBUF\n"); return 2; }
    int base = atoi(argv[2]), n = atoi(argv[3]), rcvbuf = atoi(argv[4]), ok = 0;
    for (int i = 0; i < n; i++) {
        int s = socket(AF_INET, SOCK_DGRAM, 0);
        if (s < 0) continue;
        if (setsockopt(s, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) < 0)
            setsockopt(s, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)(base + i))};
        if (bind(s, (struct sockaddr *)&a, sizeof a) == 0) ok++;
    }
    int got = 0; socklen_t gl = sizeof got;
    printf("@noise sockets=%d port_base=%d rcvbuf=%d\n", ok, base, rcvbuf);
    fflush(stdout);
    (void)gl;
    for (;;) pause(); /* never read */
}

static int cmd_workload(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: workload PAGES SEED\n"); return 2; }
    size_t pages = strtoull(argv[2], 0, 0);
    uint64_t seed = strtoull(argv[3], 0, 0);
    char *m = mmap(0, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) { printf("@workload fail mmap errno=%d\n", errno); return 1; }
    double t0 = now_s();
    printf("@workload start pages=%zu seed=%llu\n", pages, (unsigned long long)seed);
    fflush(stdout);
    for (size_t i = 0; i < pages; i++) {
        stamp((uint64_t *)(m + i * PAGE), seed, i);
        if ((i + 1) % 4096 == 0) { printf("@workload allocated=%zu t=%.1f\n", i + 1, now_s() - t0); fflush(stdout); }
    }
    printf("@workload allocated=%zu t=%.1f\n", pages, now_s() - t0);
    fflush(stdout);
    unsigned char *vec = malloc((pages + 7) & ~(size_t)7);
    size_t nonres = 0;
    if (vec && mincore(m, pages * PAGE, vec) == 0)
        for (size_t i = 0; i < pages; i++) nonres += !(vec[i] & 1);
    size_t verified = 0, bad = 0, swapped_verified = 0, first_bad = (size_t)-1;
    for (size_t i = 0; i < pages; i++) {
        int ok = check((const uint64_t *)(m + i * PAGE), seed, i);
        verified += ok; bad += !ok;
        if (!ok && first_bad == (size_t)-1) first_bad = i;
        if (ok && vec && !(vec[i] & 1)) swapped_verified++;
        if ((i + 1) % 4096 == 0) { printf("@workload verified=%zu t=%.1f\n", i + 1, now_s() - t0); fflush(stdout); }
    }
    printf("@workload done pages=%zu verified=%zu bad=%zu nonresident_before_verify=%zu swapped_in_verified=%zu first_bad=%lld t=%.1f\n",
           pages, verified, bad, nonres, swapped_verified, first_bad == (size_t)-1 ? -1LL : (long long)first_bad, now_s() - t0);
    fflush(stdout);
    return bad ? 1 : 0;
}

static int cmd_mmapfile(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: mmapfile PATH PAGES SEED\n"); return 2; }
    size_t pages = strtoull(argv[3], 0, 0);
    uint64_t seed = strtoull(argv[4], 0, 0);
    int fd = open(argv[2], O_RDWR);
    if (fd < 0) { printf("@mmapfile fail open errno=%d\n", errno); return 1; }
    char *m = mmap(0, pages * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) { printf("@mmapfile fail mmap errno=%d\n", errno); return 1; }
    double t0 = now_s();
    printf("@workload start pages=%zu seed=%llu kind=mmap\n", pages, (unsigned long long)seed);
    for (size_t i = 0; i < pages; i++) {
        stamp((uint64_t *)(m + i * PAGE), seed, i);
        if ((i + 1) % 4096 == 0) { printf("@workload allocated=%zu t=%.1f\n", i + 1, now_s() - t0); fflush(stdout); }
    }
    int s = msync(m, pages * PAGE, MS_SYNC);
    size_t verified = 0, bad = 0;
    for (size_t i = 0; i < pages; i++) {
        int ok = check((const uint64_t *)(m + i * PAGE), seed, i);
        verified += ok; bad += !ok;
    }
    printf("@workload done pages=%zu verified=%zu bad=%zu msync=%d t=%.1f\n", pages, verified, bad, s, now_s() - t0);
    fflush(stdout);
    return bad ? 1 : 0;
}

static int cmd_neigh(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: neigh IFNAME IP MAC\n"); return 2; }
    struct arpreq r;
    memset(&r, 0, sizeof r);
    struct sockaddr_in *pa = (struct sockaddr_in *)&r.arp_pa;
    pa->sin_family = AF_INET;
    if (inet_pton(AF_INET, argv[3], &pa->sin_addr) != 1) { printf("@neigh fail bad-ip=%s\n", argv[3]); return 1; }
    unsigned m[6];
    if (sscanf(argv[4], "%x:%x:%x:%x:%x:%x", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]) != 6) {
        printf("@neigh fail bad-mac=%s\n", argv[4]); return 1;
    }
    r.arp_ha.sa_family = ARPHRD_ETHER;
    for (int i = 0; i < 6; i++) r.arp_ha.sa_data[i] = (char)m[i];
    r.arp_flags = ATF_PERM | ATF_COM;
    strncpy(r.arp_dev, argv[2], sizeof r.arp_dev - 1);
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    if (s < 0 || ioctl(s, SIOCSARP, &r) < 0) { printf("@neigh fail ip=%s errno=%d\n", argv[3], errno); return 1; }
    printf("@neigh ok ip=%s mac=%s\n", argv[3], argv[4]);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, 0, _IOLBF, 0);
    if (argc >= 2) {
        if (!strcmp(argv[1], "mount")) return cmd_mount(argc, argv);
        if (!strcmp(argv[1], "sampler")) return cmd_sampler(argc, argv);
        if (!strcmp(argv[1], "noise")) return cmd_noise(argc, argv);
        if (!strcmp(argv[1], "workload")) return cmd_workload(argc, argv);
        if (!strcmp(argv[1], "mmapfile")) return cmd_mmapfile(argc, argv);
        if (!strcmp(argv[1], "neigh")) return cmd_neigh(argc, argv);
    }
    fprintf(stderr, "usage: nsdt-guest mount|sampler|noise|workload|mmapfile|neigh ...\n");
    return 2;
}
