/* procnode's bind shim, preloaded (LD_PRELOAD) into every pod process.
 *
 * All pods of a process node share the host's network namespace. A pod that binds the wildcard
 * address (0.0.0.0 or ::) would take the port on every address, so two pods could not both listen
 * on 2222 (TensorFlow's gRPC server) or 9400 (the metrics endpoint), as they can on a real cluster
 * where each pod has its own network namespace. This shim turns a wildcard bind into a bind of the
 * pod's own address, PROCNODE_POD_IP (127.0.0.N): IPv4 0.0.0.0 -> 127.0.0.N, dual-stack IPv6 :: ->
 * ::ffff:127.0.0.N. An IPv6-only wildcard socket gets EADDRNOTAVAIL (programs fall back to IPv4).
 * Every other bind passes through unchanged.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);
static bind_fn real_bind;
static struct in_addr pod_ip;
static int have_ip;

/* Runs at load, before any thread exists: getenv is safe here and never called again. */
__attribute__((constructor)) static void procnode_init(void) {
    real_bind = (bind_fn)dlsym(RTLD_NEXT, "bind");
    const char *ip = getenv("PROCNODE_POD_IP");
    have_ip = ip != NULL && inet_pton(AF_INET, ip, &pod_ip) == 1;
}

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    if (real_bind == NULL) {
        procnode_init();
    }
    if (have_ip && addr != NULL && addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        struct sockaddr_in a;
        memcpy(&a, addr, sizeof a);
        if (a.sin_addr.s_addr == htonl(INADDR_ANY)) {
            a.sin_addr = pod_ip;
            return real_bind(fd, (const struct sockaddr *)&a, sizeof a);
        }
    } else if (have_ip && addr != NULL && addr->sa_family == AF_INET6 &&
               len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 a;
        memcpy(&a, addr, sizeof a);
        if (IN6_IS_ADDR_UNSPECIFIED(&a.sin6_addr)) {
            int v6only = 0;
            socklen_t optlen = sizeof v6only;
            if (getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &optlen) == 0 && v6only) {
                errno = EADDRNOTAVAIL;
                return -1;
            }
            memset(&a.sin6_addr, 0, sizeof a.sin6_addr);
            a.sin6_addr.s6_addr[10] = 0xff;
            a.sin6_addr.s6_addr[11] = 0xff;
            memcpy(&a.sin6_addr.s6_addr[12], &pod_ip, sizeof pod_ip);
            return real_bind(fd, (const struct sockaddr *)&a, sizeof a);
        }
    }
    return real_bind(fd, addr, len);
}
