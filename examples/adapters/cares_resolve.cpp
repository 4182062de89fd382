// cares_resolve.cpp - resolve names with c-ares on a microloop loop
// (include/microloop/adapters/cares.hpp), all at once.
//
//     cares_resolve [-s SERVER[:PORT]] NAME...
//
// Prints each name's addresses (IPv4 and IPv6) or the error as its answer
// arrives. Exits 1 if any name failed.
#include <microloop/adapters/cares.hpp>

#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>

namespace {

microloop::loop<> loop;
int failed = 0;

void on_addr(void* arg, int status, int, ares_addrinfo* ai) {
    const char* name = static_cast<const char*>(arg);
    if (status != ARES_SUCCESS) {
        ++failed;
        printf("%s: %s\n", name, ares_strerror(status));
        return;
    }
    printf("%s:", name);
    for (ares_addrinfo_node* n = ai->nodes; n; n = n->ai_next) {
        char buf[INET6_ADDRSTRLEN];
        const void* a = n->ai_family == AF_INET
                            ? static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(n->ai_addr)->sin_addr)
                            : static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(n->ai_addr)->sin6_addr);
        printf(" %s", inet_ntop(n->ai_family, a, buf, sizeof buf));
    }
    printf("\n");
    ares_freeaddrinfo(ai);
}

} // namespace

int main(int argc, char** argv) {
    const char* server = nullptr;
    int first = 1;
    if (argc > 2 && strcmp(argv[1], "-s") == 0) {
        server = argv[2];
        first = 3;
    }
    if (first >= argc) {
        fprintf(stderr, "usage: cares_resolve [-s SERVER[:PORT]] NAME...\n");
        return 2;
    }
    if (ares_library_init(ARES_LIB_INIT_ALL) != ARES_SUCCESS) return 1;
    int status = 0;
    {
        microloop::ares_driver<microloop::loop<> > dns(loop);
        if (microloop::error_code e = dns.error()) {
            fprintf(stderr, "ares: %s (%s)\n", e.message(), ares_strerror(dns.status()));
            return 1;
        }
        if (server) {
            int rc = ares_set_servers_ports_csv(dns.channel(), server);
            if (rc != ARES_SUCCESS) {
                fprintf(stderr, "%s: %s\n", server, ares_strerror(rc));
                return 2;
            }
        }
        ares_addrinfo_hints hints;
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_UNSPEC;
        for (int i = first; i < argc; ++i) ares_getaddrinfo(dns.channel(), argv[i], nullptr, &hints, on_addr, argv[i]);
        if (microloop::error_code e = loop.run()) {
            fprintf(stderr, "loop: %s\n", e.message());
            status = 1;
        }
        if (microloop::error_code e = dns.last_refused()) fprintf(stderr, "a socket was refused: %s\n", e.message());
    }
    ares_library_cleanup();
    return status || failed ? 1 : 0;
}
