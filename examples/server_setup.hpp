// server_setup.hpp - what the example servers (echo_server, chat_server,
// http_file_server, multi_loop) share: the options every one of them takes,
// --port N, --bind ADDR and --help, the listening socket, and stopping on
// SIGTERM or SIGINT.
//
//     example::listen_options opt = {7000, "127.0.0.1"}; // the defaults
//     int status = example::parse_options(argc, argv, opt, usage);
//     if (status >= 0) return status;                      // --help, or a bad option
//     int fd = example::listen_on("echo_server", opt.bind_addr, opt.port);
//     if (fd < 0 || !example::stop_on_signals(loop)) return 1;
//
// A server with options of its own passes a function that takes them (see
// parse_options). Nothing here allocates.
#ifndef MICROLOOP_EXAMPLE_SERVER_SETUP_HPP
#define MICROLOOP_EXAMPLE_SERVER_SETUP_HPP

#include <microloop.hpp>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

namespace example {

// s as a decimal number in [lo, hi] (lo >= 0), all of s; -1 if it is not one.
inline long long parse_number(const char* s, long long lo, long long hi) {
    char* end = nullptr;
    long long v = strtoll(s, &end, 10);
    return *end || end == s || v < lo || v > hi ? -1 : v;
}

struct listen_options {
    int port;              // 0: a free port
    const char* bind_addr; // an IPv4 address
};

// Never an option of its own: for the servers that have none.
inline size_t no_other_options(const char*, const char*) { return 0; }

// Reads argv: --help, --port N (0..65535) and --bind ADDR into opt, every
// other option through other(name, value), with value the argument after
// name or nullptr if there is none; other returns how many arguments it
// took (1 or 2), 0 for an unknown option, a missing or a bad value.
// Returns -1 to go on, else the exit status: 0 after --help (usage on
// stdout), 2 after a bad option (usage on stderr).
template <class Other>
int parse_options(int argc, char** argv, listen_options& opt, void (*usage)(FILE*), Other other) {
    for (int i = 1; i < argc; ++i) {
        const char* value = i + 1 < argc ? argv[i + 1] : nullptr;
        if (strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        }
        size_t took = 0;
        if (strcmp(argv[i], "--port") == 0 && value) {
            long long p = parse_number(value, 0, 65535);
            opt.port = static_cast<int>(p);
            took = p < 0 ? 0 : 2;
        } else if (strcmp(argv[i], "--bind") == 0 && value) {
            opt.bind_addr = value;
            took = 2;
        } else {
            took = other(argv[i], value);
        }
        if (took == 0 || (took == 2 && !value)) {
            usage(stderr);
            return 2;
        }
        i += static_cast<int>(took) - 1;
    }
    return -1;
}

inline int parse_options(int argc, char** argv, listen_options& opt, void (*usage)(FILE*)) {
    return parse_options(argc, argv, opt, usage, no_other_options);
}

// A non-blocking TCP socket listening on addr:port; prints "listening on
// ADDR:PORT" (the port it got, for port 0) on stdout. -1 on failure, the
// reason on stderr after `name`.
inline int listen_on(const char* name, const char* addr, int port, int backlog = 128) {
    sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1) {
        fprintf(stderr, "%s: bad address %s\n", name, addr);
        return -1;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    socklen_t len = sizeof sa;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || listen(fd, backlog) != 0 ||
        getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) != 0) {
        fprintf(stderr, "%s: listen: %s\n", name, strerror(errno));
        if (fd >= 0) close(fd);
        return -1;
    }
    printf("listening on %s:%d\n", addr, ntohs(sa.sin_port));
    fflush(stdout);
    return fd;
}

// SIGTERM and SIGINT stop `loop`: its run() returns. False if they cannot be watched.
template <class Loop>
bool stop_on_signals(Loop& loop) {
    Loop* l = &loop;
    auto stop = [l](microloop::signal_event) { l->stop(); };
    return loop.on_signal(SIGTERM, stop) && loop.on_signal(SIGINT, stop);
}

} // namespace example

#endif // MICROLOOP_EXAMPLE_SERVER_SETUP_HPP
