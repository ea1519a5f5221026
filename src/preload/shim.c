/* hapmaster's preload library for haproxy 1.5 - 1.7, which cannot take sockets with -x.
 *
 * Loaded with LD_PRELOAD into a worker, it asks the master at each listener bind() whether the
 * master holds a socket for that address, and if so puts the held socket at the worker's fd
 * instead of binding (what 1.8's -x does inside haproxy). Sockets the worker binds itself are
 * reported to the master after listen(). The protocol is described in src/preload/wire.rs; the
 * constants below must match it (the Rust tests run this library against the Rust side).
 *
 * Fail-closed: once the master gave us a channel, a bind we could not ask about fails with
 * EADDRINUSE. A real bind while the master may hold the address would put a second socket next
 * to the held one (both with SO_REUSEPORT) and the kernel would spread connections over both.
 *
 * Runs inside haproxy: no allocation after the constructor, MSG_NOSIGNAL on every send, every
 * wait bounded by SO_RCVTIMEO / SO_SNDTIMEO. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef SIOCGSKNS
#define SIOCGSKNS 0x894C
#endif
#ifndef IPV6_FREEBIND
#define IPV6_FREEBIND 78
#endif

#define ENV_FD "HAPMASTER_PRELOAD_FD"
#define WIRE_VERSION 1
enum kind { HELLO = 1, ADOPT = 2, NEW = 3, FD = 4, NONE = 5, END = 6 };
#define F_V6ONLY 1u
#define F_TRANSPARENT 2u
/* How long one exchange with the master may take: it answers from its event loop at once, so
 * this only bounds a master that stopped answering. */
#define TIMEOUT_SEC 10

struct msg {
    uint32_t version;
    uint32_t kind;
    uint32_t pid;
    uint32_t addr_len;
    uint8_t addr[128];
    char iface[16];
    uint32_t flags;
    uint32_t reserved;
    uint64_t netns;
};
_Static_assert(sizeof(struct msg) == 176, "the wire message is 176 bytes (wire.rs MSG_LEN)");

enum state {
    UNUSED, /* no channel: not started by hapmaster, every call goes to libc */
    OPEN,   /* startup: listener binds are asked about */
    ENDED,  /* the master said startup is over: binds are the worker's own (e.g. `source`) */
    BROKEN, /* the channel failed before END: listener binds fail */
};

static enum state state = UNUSED;
static int chan = -1;
/* The process that said HELLO. haproxy binds its listeners before it forks (nbproc, -D): in a
 * forked process startup is over, whether or not that process read the master's END. */
static pid_t hello_pid;
static int (*real_bind)(int, const struct sockaddr *, socklen_t);
static int (*real_listen)(int, int);
static int (*real_rename)(const char *, const char *);
/* The temporary name haproxy bound an adopted unix socket's placeholder at (<path>.<pid>.tmp):
 * its rename over <path> must not replace the held socket's file. */
static char adopted_tmp[sizeof(((struct sockaddr_un *)0)->sun_path) + 1];

static void say(const char *what)
{
    char line[256];
    int n = snprintf(line, sizeof(line), "hapmaster preload (pid %d): %s\n", (int)getpid(), what);
    if (n > 0)
        (void)!write(2, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

static void broken(const char *why)
{
    if (state == OPEN)
        say(why);
    state = BROKEN;
}

static int send_msg(const struct msg *m, int fd)
{
    struct iovec iov = {(void *)m, sizeof(*m)};
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int))];
    } control;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (fd >= 0) {
        memset(&control, 0, sizeof(control));
        mh.msg_control = control.buf;
        mh.msg_controllen = sizeof(control.buf);
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    ssize_t n;
    do
        n = sendmsg(chan, &mh, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    return n == (ssize_t)sizeof(*m) ? 0 : -1;
}

/* Receives one message and at most one fd (closed unless *fd is given). Returns 0, or -1 on
 * EOF, error, timeout or a malformed message. */
static int recv_msg(struct msg *m, int *fd, int flags)
{
    struct iovec iov = {m, sizeof(*m)};
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int) * 4)];
    } control;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                        .msg_controllen = sizeof(control.buf)};
    ssize_t n;
    do
        n = recvmsg(chan, &mh, flags | MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    int got = -1, extra = 0;
    if (n > 0)
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                continue;
            int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            for (int i = 0; i < count; i++) {
                int one;
                memcpy(&one, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
                if (got < 0)
                    got = one;
                else {
                    close(one);
                    extra = 1;
                }
            }
        }
    int ok = n == (ssize_t)sizeof(*m) && !(mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) && !extra &&
             m->version == WIRE_VERSION;
    if (ok && fd && (m->kind == FD) == (got >= 0)) {
        *fd = got;
        return 0;
    }
    if (got >= 0)
        close(got);
    if (ok && !fd && got < 0)
        return 0;
    if (n >= 0)
        errno = n == 0 ? EPIPE /* the master closed its end */ : EPROTO;
    return -1;
}

/* A message the master may send without being asked: END (startup is over). Returns 1 if the
 * channel said END, 0 if nothing is pending, -1 if it failed. */
static int poll_end(void)
{
    struct msg m;
    if (recv_msg(&m, NULL, MSG_DONTWAIT) == 0) {
        if (m.kind == END) {
            state = ENDED;
            return 1;
        }
        broken("unexpected message from the master");
        return -1;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK)
        return 0;
    broken("the channel to the master closed before it ended the startup");
    return -1;
}

static int getsockopt_int(int fd, int level, int name)
{
    int v = 0;
    socklen_t l = sizeof(v);
    return getsockopt(fd, level, name, &v, &l) == 0 ? v : 0;
}

/* The socket's keys as the master matches them (matcher.rs; socket_key.rs reads the same).
 * netns stays 0 without CAP_NET_ADMIN (SIOCGSKNS), on both sides alike. */
static void describe(int fd, const struct sockaddr *sa, socklen_t len, struct msg *m)
{
    m->addr_len = len < sizeof(m->addr) ? len : sizeof(m->addr);
    memcpy(m->addr, sa, m->addr_len);
    socklen_t il = sizeof(m->iface) - 1;
    if (getsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, m->iface, &il) != 0)
        memset(m->iface, 0, sizeof(m->iface));
    m->iface[sizeof(m->iface) - 1] = 0;
    if (sa->sa_family == AF_INET6) {
        if (getsockopt_int(fd, IPPROTO_IPV6, IPV6_V6ONLY))
            m->flags |= F_V6ONLY;
        if (getsockopt_int(fd, IPPROTO_IPV6, IPV6_TRANSPARENT) ||
            getsockopt_int(fd, IPPROTO_IPV6, IPV6_FREEBIND))
            m->flags |= F_TRANSPARENT;
    } else if (sa->sa_family == AF_INET) {
        if (getsockopt_int(fd, IPPROTO_IP, IP_TRANSPARENT) ||
            getsockopt_int(fd, IPPROTO_IP, IP_FREEBIND))
            m->flags |= F_TRANSPARENT;
    }
    int ns = ioctl(fd, SIOCGSKNS);
    if (ns >= 0) {
        struct stat st;
        if (fstat(ns, &st) == 0)
            m->netns = st.st_ino;
        close(ns);
    }
}

/* Whether a bind or listen on fd is one the master may hold: a stream socket of family inet,
 * inet6 or unix, at a port or name (port 0 is an outgoing `source` bind). */
static int is_listener(int fd, const struct sockaddr *sa, socklen_t len)
{
    if (!sa || len < sizeof(sa_family_t))
        return 0;
    if (getsockopt_int(fd, SOL_SOCKET, SO_TYPE) != SOCK_STREAM)
        return 0;
    switch (sa->sa_family) {
    case AF_INET:
        return len >= sizeof(struct sockaddr_in) && ((const struct sockaddr_in *)sa)->sin_port;
    case AF_INET6:
        return len >= sizeof(struct sockaddr_in6) && ((const struct sockaddr_in6 *)sa)->sin6_port;
    case AF_UNIX:
        return len > offsetof(struct sockaddr_un, sun_path);
    }
    return 0;
}

/* Puts the held socket at fd, keeping fd's file status and descriptor flags. */
static int adopt(int fd, int held)
{
    int fl = fcntl(fd, F_GETFL), fdfl = fcntl(fd, F_GETFD);
    if (fl < 0 || fdfl < 0 || dup3(held, fd, fdfl & FD_CLOEXEC ? O_CLOEXEC : 0) < 0) {
        close(held);
        return -1;
    }
    close(held);
    return fcntl(fd, F_SETFL, fl) < 0 ? -1 : 0;
}

/* Whether sa is a unix path ending in .<digits>.tmp: haproxy's temporary bind name. */
static int is_unix_tmp(const struct sockaddr *sa, socklen_t len)
{
    const struct sockaddr_un *un = (const void *)sa;
    if (sa->sa_family != AF_UNIX || len <= offsetof(struct sockaddr_un, sun_path) ||
        !un->sun_path[0])
        return 0;
    size_t n = strnlen(un->sun_path, len - offsetof(struct sockaddr_un, sun_path));
    if (n < 6 || n >= sizeof(adopted_tmp) || memcmp(un->sun_path + n - 4, ".tmp", 4))
        return 0;
    size_t i = n - 4;
    while (i > 0 && un->sun_path[i - 1] >= '0' && un->sun_path[i - 1] <= '9')
        i--;
    return i < n - 4 && i > 1 && un->sun_path[i - 1] == '.';
}

/* Whether startup is over in this process without the master saying so: a forked child. */
static void check_forked(void)
{
    if (state == OPEN && getpid() != hello_pid)
        state = ENDED;
}

/* This image binds listeners, so it is the worker (not a wrapper that execs it): neither the
 * library nor the channel may reach haproxy's own children (external-check, Lua io.popen). */
static void claim(void)
{
    static int claimed;
    if (claimed || state == UNUSED)
        return;
    claimed = 1;
    unsetenv("LD_PRELOAD");
    unsetenv(ENV_FD);
    if (chan >= 0 && fcntl(chan, F_SETFD, FD_CLOEXEC) < 0)
        broken("cannot keep the channel from haproxy's children");
}

int bind(int fd, const struct sockaddr *sa, socklen_t len)
{
    check_forked();
    if (is_listener(fd, sa, len))
        claim();
    if (state == OPEN && is_listener(fd, sa, len))
        poll_end();
    if (state == UNUSED || state == ENDED || !is_listener(fd, sa, len))
        return real_bind(fd, sa, len);
    struct msg m = {.version = WIRE_VERSION, .kind = ADOPT, .pid = (uint32_t)getpid()};
    int held = -1;
    if (state == OPEN) {
        describe(fd, sa, len, &m);
        if (send_msg(&m, -1) < 0) {
            /* The master may have said END and closed since we looked. */
            if (poll_end() == 1)
                return real_bind(fd, sa, len);
            broken("cannot ask the master about a bind");
        } else if (recv_msg(&m, &held, 0) < 0) {
            broken("no valid answer from the master about a bind (closed, timed out or garbled)");
        } else if (m.kind == END) {
            state = ENDED;
            return real_bind(fd, sa, len);
        } else if (m.kind == NONE) {
            return real_bind(fd, sa, len);
        } else if (m.kind != FD) {
            close(held);
            broken("unexpected answer from the master about a bind");
        }
    }
    if (state != OPEN) {
        errno = EADDRINUSE;
        return -1;
    }
    if (is_unix_tmp(sa, len)) {
        /* A placeholder at the temporary name, so that haproxy's chmod/chown of it succeed. */
        if (real_bind(fd, sa, len) < 0) {
            close(held);
            return -1;
        }
        const struct sockaddr_un *un = (const void *)sa;
        memset(adopted_tmp, 0, sizeof(adopted_tmp));
        memcpy(adopted_tmp, un->sun_path,
               strnlen(un->sun_path, len - offsetof(struct sockaddr_un, sun_path)));
    }
    return adopt(fd, held);
}

int listen(int fd, int backlog)
{
    int rc = real_listen(fd, backlog);
    check_forked();
    if (rc < 0 || state != OPEN)
        return rc;
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0 ||
        !is_listener(fd, (struct sockaddr *)&ss, len))
        return rc;
    int ended = poll_end();
    if (ended == 1)
        return rc;
    if (ended < 0) {
        errno = EADDRINUSE;
        return -1;
    }
    struct msg m = {.version = WIRE_VERSION, .kind = NEW, .pid = (uint32_t)getpid()};
    describe(fd, (struct sockaddr *)&ss, len, &m);
    if (send_msg(&m, fd) < 0) {
        if (poll_end() == 1)
            return rc;
        /* The master would not know this listener: haproxy must not run with it. */
        broken("cannot report a new listener to the master");
        errno = EADDRINUSE;
        return -1;
    }
    return rc;
}

int rename(const char *from, const char *to)
{
    if (adopted_tmp[0] && strcmp(from, adopted_tmp) == 0) {
        adopted_tmp[0] = 0;
        /* <to> already names the held socket: drop only the placeholder's file. */
        return unlink(from);
    }
    return real_rename(from, to);
}

__attribute__((constructor)) static void start(void)
{
    real_bind = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "bind");
    real_listen = (int (*)(int, int))dlsym(RTLD_NEXT, "listen");
    real_rename = (int (*)(const char *, const char *))dlsym(RTLD_NEXT, "rename");
    const char *env = getenv(ENV_FD);
    /* Both stay for an exec (a wrapper script: `exec haproxy "$@"`) until this image binds a
     * listener (claim()). */
    if (!env)
        return;
    state = OPEN;
    if (!real_bind || !real_listen || !real_rename) {
        broken("cannot find libc's bind, listen or rename");
        return;
    }
    char *end;
    long n = strtol(env, &end, 10);
    if (!*env || *end || n < 0 || n > 1 << 20) {
        broken("HAPMASTER_PRELOAD_FD is not an fd number");
        return;
    }
    chan = (int)n;
    struct timeval tv = {TIMEOUT_SEC, 0};
    if (getsockopt_int(chan, SOL_SOCKET, SO_TYPE) != SOCK_SEQPACKET ||
        setsockopt(chan, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
        setsockopt(chan, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0) {
        broken("HAPMASTER_PRELOAD_FD is not a seqpacket socket");
        return;
    }
    hello_pid = getpid();
    struct msg hello = {.version = WIRE_VERSION, .kind = HELLO, .pid = (uint32_t)hello_pid};
    if (send_msg(&hello, -1) < 0)
        broken("cannot say hello to the master");
}
