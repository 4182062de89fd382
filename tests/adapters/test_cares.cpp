// The c-ares adapter against a stub DNS server on 127.0.0.1 (a forked child
// answering A queries): known names, NXDOMAIN, a first query dropped so that
// only the timer's retry gets an answer, and sockets the loop cannot watch.
#include <microloop/adapters/cares.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <vector>

#include "../catch.hpp"

using namespace std::chrono;
using microloop::errc;

namespace {

// Names it knows: NAME.test -> 10.0.0.N for "aN"; "drop-*.test" answered
// 10.9.9.9, but only from the second query for that name on; anything else
// NXDOMAIN. Non-A queries of known names: no answer, NOERROR.
class stub_dns {
public:
    stub_dns() {
        fd_ = socket(AF_INET, SOCK_DGRAM, 0);
        REQUIRE(fd_ >= 0);
        sockaddr_in a = {};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
        socklen_t l = sizeof a;
        getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &l);
        port_ = ntohs(a.sin_port);
        pid_ = fork();
        REQUIRE(pid_ >= 0);
        if (pid_ == 0) {
            signal(SIGTERM, SIG_DFL); // not the test framework's handler
            signal(SIGALRM, SIG_DFL);
            alarm(60); // never outlive a test that lost it
            serve();
            _exit(0);
        }
        close(fd_);
    }
    ~stub_dns() {
        kill(pid_, SIGKILL); // not SIGTERM: the child may not have left the framework's handler yet
        int st;
        waitpid(pid_, &st, 0);
    }
    std::string servers() const { return "127.0.0.1:" + std::to_string(port_); }

private:
    void serve() {
        std::vector<std::string> seen;
        unsigned char q[512], r[512];
        for (;;) {
            sockaddr_in from;
            socklen_t fl = sizeof from;
            ssize_t n = recvfrom(fd_, q, sizeof q, 0, reinterpret_cast<sockaddr*>(&from), &fl);
            if (n < 17) continue;
            // The question: labels from byte 12, then qtype, qclass.
            std::string name;
            size_t i = 12;
            while (i < static_cast<size_t>(n) && q[i] != 0) {
                size_t len = q[i];
                if (!name.empty()) name += '.';
                name.append(reinterpret_cast<char*>(q + i + 1), len);
                i += len + 1;
            }
            const size_t qend = i + 5; // the 0, qtype, qclass
            if (qend > static_cast<size_t>(n)) continue;
            const unsigned qtype = static_cast<unsigned>(q[i + 1] << 8 | q[i + 2]);
            bool known = false;
            unsigned char addr[4] = {10, 0, 0, 0};
            if (name.compare(0, 5, "drop-") == 0 && name.size() > 5) {
                bool again = false;
                for (auto& s : seen) again = again || s == name;
                if (!again) {
                    seen.push_back(name);
                    continue; // the first query is lost
                }
                known = true;
                addr[1] = addr[2] = addr[3] = 9;
            } else if (name.size() > 6 && name[0] == 'a' && name.compare(name.size() - 5, 5, ".test") == 0) {
                known = true;
                addr[3] = static_cast<unsigned char>(atoi(name.c_str() + 1));
            }
            memcpy(r, q, qend);
            r[2] = 0x81; // QR, RD
            r[3] = static_cast<unsigned char>(0x80 | (known ? 0 : 3)); // RA; NXDOMAIN
            r[4] = 0, r[5] = 1;                                         // one question
            const bool answer = known && qtype == 1;
            r[6] = 0, r[7] = answer ? 1 : 0;
            r[8] = r[9] = r[10] = r[11] = 0;
            size_t len = qend;
            if (answer) {
                const unsigned char rr[] = {0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4};
                memcpy(r + len, rr, sizeof rr);
                len += sizeof rr;
                memcpy(r + len, addr, 4);
                len += 4;
            }
            sendto(fd_, r, len, 0, reinterpret_cast<sockaddr*>(&from), fl);
        }
    }
    int fd_ = -1;
    int port_ = 0;
    pid_t pid_ = -1;
};

struct answer {
    bool done = false;
    int status = -1;
    char addr[INET_ADDRSTRLEN] = {0};
    steady_clock::time_point at;
};

void on_host(void* arg, int status, int, hostent* h) {
    answer& a = *static_cast<answer*>(arg);
    a.done = true;
    a.status = status;
    a.at = steady_clock::now();
    if (status == ARES_SUCCESS && h && h->h_addr_list[0]) inet_ntop(AF_INET, h->h_addr_list[0], a.addr, sizeof a.addr);
}

const int timeout_ms = 300;

template <class Loop>
struct resolver {
    microloop::ares_driver<Loop> dns;
    static ares_options options() {
        ares_options o = ares_options();
        o.flags = ARES_FLAG_NOSEARCH;
        o.timeout = timeout_ms;
        o.tries = 3;
        o.lookups = const_cast<char*>("b"); // DNS only, no /etc/hosts
        return o;
    }
    resolver(Loop& loop, const stub_dns& srv) : dns(loop, opts(), mask()) {
        REQUIRE_FALSE(dns.error());
        REQUIRE(ares_set_servers_ports_csv(dns.channel(), srv.servers().c_str()) == ARES_SUCCESS);
    }
    static const ares_options* opts() {
        static ares_options o = options();
        return &o;
    }
    static int mask() { return ARES_OPT_FLAGS | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_LOOKUPS; }
};

struct library {
    library() { ares_library_init(ARES_LIB_INIT_ALL); }
    ~library() { ares_library_cleanup(); }
};

bool guard_fired = false;

} // namespace

TEST_CASE("c-ares: names resolve to their addresses, unknown names are ARES_ENOTFOUND") {
    library lib;
    stub_dns srv;
    typedef microloop::loop<8, 8> L;
    static L loop;
    resolver<L> r(loop, srv);
    answer a1, a7, a42, none;
    ares_gethostbyname(r.dns.channel(), "a1.test", AF_INET, on_host, &a1);
    ares_gethostbyname(r.dns.channel(), "a7.test", AF_INET, on_host, &a7);
    ares_gethostbyname(r.dns.channel(), "a42.test", AF_INET, on_host, &a42);
    ares_gethostbyname(r.dns.channel(), "nosuch.test", AF_INET, on_host, &none);
    guard_fired = false;
    auto guard = loop.after(seconds(10), [](microloop::timer_event) {
        guard_fired = true;
        loop.stop();
    });
    // The guard keeps run() going: drive until the answers are in.
    while (!(a1.done && a7.done && a42.done && none.done) && !guard_fired) REQUIRE_FALSE(loop.run_once());
    loop.cancel(guard);
    CHECK_FALSE(guard_fired);
    CHECK(a1.status == ARES_SUCCESS);
    CHECK(std::string(a1.addr) == "10.0.0.1");
    CHECK(std::string(a7.addr) == "10.0.0.7");
    CHECK(std::string(a42.addr) == "10.0.0.42");
    CHECK(none.status == ARES_ENOTFOUND);
    CHECK(r.dns.timeouts() == 0);
    REQUIRE_FALSE(loop.run()); // nothing left: the socket is closed, the timer cancelled
    CHECK(loop.stats().io.used == 0);
    CHECK(loop.active() == 0);
}

TEST_CASE("c-ares: a dropped query is answered after the retry the timer drives") {
    library lib;
    stub_dns srv;
    typedef microloop::loop<8, 8> L;
    static L loop;
    resolver<L> r(loop, srv);
    answer a;
    const auto t0 = steady_clock::now();
    ares_gethostbyname(r.dns.channel(), "drop-me.test", AF_INET, on_host, &a);
    guard_fired = false;
    auto guard = loop.after(seconds(10), [](microloop::timer_event) {
        guard_fired = true;
        loop.stop();
    });
    while (!a.done && !guard_fired) REQUIRE_FALSE(loop.run_once());
    loop.cancel(guard);
    CHECK_FALSE(guard_fired);
    CHECK(a.status == ARES_SUCCESS);
    CHECK(std::string(a.addr) == "10.9.9.9");
    CHECK(r.dns.timeouts() >= 1);
    CHECK(a.at - t0 >= milliseconds(timeout_ms));
    CHECK(a.at - t0 < milliseconds(5 * timeout_ms));
    REQUIRE_FALSE(loop.run());
}

TEST_CASE("c-ares: a loop with no free fd slot fails the query at once (table_full), no hang") {
    library lib;
    stub_dns srv;
    typedef microloop::loop<1, 4> L;
    static L loop;
    resolver<L> r(loop, srv);
    int p[2];
    REQUIRE(pipe(p) == 0);
    auto filler = loop.watch(p[0], microloop::readable, [](microloop::io_event) {});
    REQUIRE(filler);
    answer a;
    const auto t0 = steady_clock::now();
    ares_gethostbyname(r.dns.channel(), "a1.test", AF_INET, on_host, &a);
    loop.unwatch(filler);
    guard_fired = false;
    auto guard = loop.after(seconds(10), [](microloop::timer_event) {
        guard_fired = true;
        loop.stop();
    });
    while (!a.done && !guard_fired) REQUIRE_FALSE(loop.run_once());
    loop.cancel(guard);
    CHECK(a.done);
    CHECK(a.status == ARES_ECONNREFUSED);
    CHECK(a.at - t0 < milliseconds(timeout_ms));
    CHECK(r.dns.last_refused() == errc::table_full);
    close(p[0]);
    close(p[1]);
}

TEST_CASE("c-ares: with 1,100 fds open the socket is >= FD_SETSIZE: the query fails at once, no hang") {
    library lib;
    stub_dns srv;
    rlimit old;
    REQUIRE(getrlimit(RLIMIT_NOFILE, &old) == 0);
    rlimit more = old;
    if (more.rlim_cur < 2048) more.rlim_cur = more.rlim_max < 2048 ? more.rlim_max : 2048;
    REQUIRE(setrlimit(RLIMIT_NOFILE, &more) == 0);
    std::vector<int> held;
    while (held.size() < 1100) {
        int fd = open("/dev/null", O_RDONLY);
        REQUIRE(fd >= 0);
        held.push_back(fd);
    }
    {
        typedef microloop::loop<8, 8> L;
        static L loop;
        resolver<L> r(loop, srv);
        answer a;
        const auto t0 = steady_clock::now();
        ares_gethostbyname(r.dns.channel(), "a1.test", AF_INET, on_host, &a);
        guard_fired = false;
        auto guard = loop.after(seconds(10), [](microloop::timer_event) {
            guard_fired = true;
            loop.stop();
        });
        while (!a.done && !guard_fired) REQUIRE_FALSE(loop.run_once());
        loop.cancel(guard);
        CHECK_FALSE(guard_fired);
        CHECK(a.status == ARES_ECONNREFUSED);
        CHECK(a.at - t0 < milliseconds(timeout_ms));
        CHECK(r.dns.last_refused() == errc::fd_out_of_range);
    }
    for (int fd : held) close(fd);
    setrlimit(RLIMIT_NOFILE, &old);
}
