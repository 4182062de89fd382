// The libcurl adapter against real servers on loopback: the project's own
// http_file_server and python3's http.server, parallel downloads checked byte
// for byte, and sockets the loop cannot watch (a tiny fd table, fds above
// FD_SETSIZE) failing their own transfers at once.
#include <microloop/adapters/curl.hpp>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <vector>

#include "../catch.hpp"

using namespace std::chrono;
using microloop::errc;

namespace {

// A temp dir of files of the given sizes, named by size (pseudo-random bytes).
struct www {
    char dir[64];
    std::vector<size_t> sizes;
    explicit www(const std::vector<size_t>& s) : sizes(s) {
        strcpy(dir, "/tmp/microloop-curl.XXXXXX");
        REQUIRE(mkdtemp(dir) != nullptr);
        for (size_t sz : sizes) {
            std::string p = path(sz);
            FILE* f = fopen(p.c_str(), "wb");
            REQUIRE(f);
            for (size_t i = 0; i < sz; ++i) fputc(static_cast<int>(byte_at(sz, i)), f);
            fclose(f);
        }
    }
    ~www() {
        for (size_t sz : sizes) unlink(path(sz).c_str());
        rmdir(dir);
    }
    std::string path(size_t sz) const { return std::string(dir) + "/" + std::to_string(sz) + ".bin"; }
    static unsigned char byte_at(size_t sz, size_t i) {
        return static_cast<unsigned char>((i * 2654435761u + sz) >> 7);
    }
};

// A server process on 127.0.0.1; port read from what it prints.
struct server {
    pid_t pid = -1;
    int port = 0;
    // http_file_server prints "listening on 127.0.0.1:PORT" first.
    explicit server(const char* root) {
        const char* b = getenv("BUILD");
        std::string exe = std::string(b ? b : "build") + "/examples/http_file_server";
        INFO("needs " << exe << ": make BUILD=" << (b ? b : "build") << " examples");
        REQUIRE(access(exe.c_str(), X_OK) == 0);
        start({exe, "--root", root, "--port", "0"}, nullptr);
        char line[128] = {0};
        read_line(line, sizeof line);
        const char* colon = strrchr(line, ':');
        REQUIRE(strncmp(line, "listening on ", 13) == 0);
        port = atoi(colon + 1);
    }
    // python3 -m http.server on a port found free first.
    server(const char* root, bool) {
        port = free_port();
        std::string ps = std::to_string(port);
        start({"python3", "-m", "http.server", "--bind", "127.0.0.1", ps}, root);
        for (int i = 0; i < 100 && !accepts(); ++i) usleep(50000);
        REQUIRE(accepts());
    }
    ~server() {
        if (pid > 0) {
            kill(pid, SIGTERM);
            int st;
            waitpid(pid, &st, 0);
        }
        if (out >= 0) close(out);
    }
    int out = -1;
    void start(std::vector<std::string> args, const char* cwd) {
        int p[2];
        REQUIRE(pipe(p) == 0);
        pid = fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            dup2(p[1], 1);
            int dn = open("/dev/null", O_WRONLY);
            dup2(dn, 2);
            for (int fd = 3; fd < 4096; ++fd) close(fd);
            if (cwd && chdir(cwd) != 0) _exit(127);
            std::vector<char*> av;
            for (auto& a : args) av.push_back(&a[0]);
            av.push_back(nullptr);
            execvp(av[0], av.data());
            _exit(127);
        }
        close(p[1]);
        out = p[0];
    }
    void read_line(char* buf, size_t n) {
        size_t i = 0;
        while (i + 1 < n) {
            char c;
            if (read(out, &c, 1) != 1 || c == '\n') break;
            buf[i++] = c;
        }
        buf[i] = 0;
    }
    static int free_port() {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in a = {};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
        socklen_t l = sizeof a;
        getsockname(s, reinterpret_cast<sockaddr*>(&a), &l);
        close(s);
        return ntohs(a.sin_port);
    }
    bool accepts() const {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in a = {};
        a.sin_family = AF_INET;
        a.sin_port = htons(static_cast<uint16_t>(port));
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        bool ok = connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
        close(s);
        return ok;
    }
    std::string url(size_t sz) const {
        return "http://127.0.0.1:" + std::to_string(port) + "/" + std::to_string(sz) + ".bin";
    }
};

// One download: checks every byte as it arrives.
struct download {
    size_t size = 0, got = 0;
    bool mismatch = false;
    bool done = false;
    CURLcode result = CURLE_OK;
    microloop::error_code refused;
    long status = 0;
    milliseconds took{0};
    CURL* easy = nullptr;
    static size_t write(char* p, size_t one, size_t n, void* u) {
        download& d = *static_cast<download*>(u);
        for (size_t i = 0; i < one * n; ++i)
            if (static_cast<unsigned char>(p[i]) != www::byte_at(d.size, d.got + i)) d.mismatch = true;
        d.got += one * n;
        return one * n;
    }
};

// Transfers not yet done; the test's loop stops when it reaches 0 (its guard
// timer would otherwise keep run() going).
size_t pending = 0;
void (*stop_loop)() = nullptr;
bool guard_fired = false;

template <class Driver>
void start_all(Driver& drv, std::vector<download>& ds, const server& srv) {
    for (auto& d : ds) {
        d.easy = curl_easy_init();
        REQUIRE(d.easy);
        curl_easy_setopt(d.easy, CURLOPT_URL, srv.url(d.size).c_str());
        curl_easy_setopt(d.easy, CURLOPT_WRITEFUNCTION, &download::write);
        curl_easy_setopt(d.easy, CURLOPT_WRITEDATA, &d);
        curl_easy_setopt(d.easy, CURLOPT_PRIVATE, &d);
        curl_easy_setopt(d.easy, CURLOPT_TIMEOUT_MS, 20000L);
        REQUIRE_FALSE(drv.add(d.easy));
        ++pending;
    }
}

void record(microloop::curl_done ev, steady_clock::time_point t0) {
    char* p = nullptr;
    curl_easy_getinfo(ev.easy, CURLINFO_PRIVATE, &p);
    download& d = *reinterpret_cast<download*>(p);
    d.done = true;
    d.result = ev.result;
    d.refused = ev.refused;
    d.took = duration_cast<milliseconds>(steady_clock::now() - t0);
    curl_easy_getinfo(ev.easy, CURLINFO_RESPONSE_CODE, &d.status);
    curl_easy_cleanup(ev.easy);
    if (--pending == 0) stop_loop();
}

const std::vector<size_t> sizes = {0, 1, 4095, 4096, 65537, 1u << 20, 8u << 20};

template <class Loop>
void fifty_parallel(const server& srv) {
    static Loop loop;
    static steady_clock::time_point t0;
    microloop::curl_driver<Loop, 64> drv(loop);
    std::vector<download> ds(50);
    for (size_t i = 0; i < ds.size(); ++i) ds[i].size = sizes[i % sizes.size()];
    t0 = steady_clock::now();
    pending = 0;
    guard_fired = false;
    stop_loop = [] { loop.stop(); };
    drv.on_done([](microloop::curl_done ev) { record(ev, t0); });
    start_all(drv, ds, srv);
    auto guard = loop.after(seconds(30), [](microloop::timer_event) {
        guard_fired = true;
        loop.stop();
    });
    REQUIRE_FALSE(loop.run());
    loop.cancel(guard);
    CHECK_FALSE(guard_fired);
    for (auto& d : ds) {
        INFO("size " << d.size << ": " << curl_easy_strerror(d.result));
        CHECK(d.done);
        CHECK(d.result == CURLE_OK);
        CHECK(d.status == 200);
        CHECK(d.got == d.size);
        CHECK_FALSE(d.mismatch);
    }
    CHECK(drv.in_flight() == 0);
    CHECK(loop.stats().io.used == 0);
}

} // namespace

TEST_CASE("curl: 50 parallel downloads from http_file_server, 0 B to 8 MiB, byte-exact") {
    www files(sizes);
    server srv(files.dir);
    fifty_parallel<microloop::loop<64, 8> >(srv);
}

TEST_CASE("curl: 50 parallel downloads from python's http.server, byte-exact") {
    www files(sizes);
    server srv(files.dir, true);
    fifty_parallel<microloop::loop<64, 8> >(srv);
}

TEST_CASE("curl: a loop with 2 fd slots: the transfers beyond them fail at once (table_full), the rest complete") {
    www files({65537});
    server srv(files.dir);
    typedef microloop::loop<2, 4> small_loop;
    static small_loop loop;
    static steady_clock::time_point t0;
    microloop::curl_driver<small_loop, 8> drv(loop);
    std::vector<download> ds(6);
    for (auto& d : ds) d.size = 65537;
    t0 = steady_clock::now();
    pending = 0;
    guard_fired = false;
    stop_loop = [] { loop.stop(); };
    drv.on_done([](microloop::curl_done ev) { record(ev, t0); });
    start_all(drv, ds, srv);
    auto guard = loop.after(seconds(20), [](microloop::timer_event) {
        guard_fired = true;
        loop.stop();
    });
    REQUIRE_FALSE(loop.run());
    loop.cancel(guard);
    CHECK_FALSE(guard_fired);
    size_t ok = 0, refused = 0;
    for (auto& d : ds) {
        REQUIRE(d.done);
        if (d.result == CURLE_OK) {
            ++ok;
            CHECK(d.got == d.size);
            CHECK_FALSE(d.mismatch);
        } else {
            ++refused;
            CHECK(d.result == CURLE_ABORTED_BY_CALLBACK);
            CHECK(d.refused == errc::table_full);
            CHECK(d.took < milliseconds(1000));
        }
    }
    CHECK(ok == 2);
    CHECK(refused == 4);
}

TEST_CASE("curl: with 1,100 fds open every socket is >= FD_SETSIZE: every transfer fails at once, no hang") {
    www files({4096});
    server srv(files.dir);
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
        typedef microloop::loop<64, 8> big_loop;
        static big_loop loop;
        static steady_clock::time_point t0;
        microloop::curl_driver<big_loop, 32> drv(loop);
        std::vector<download> ds(20);
        for (auto& d : ds) d.size = 4096;
        t0 = steady_clock::now();
    pending = 0;
    guard_fired = false;
    stop_loop = [] { loop.stop(); };
        drv.on_done([](microloop::curl_done ev) { record(ev, t0); });
        start_all(drv, ds, srv);
        auto guard = loop.after(seconds(10), [](microloop::timer_event) {
            guard_fired = true;
            loop.stop();
        });
        REQUIRE_FALSE(loop.run());
        loop.cancel(guard);
        CHECK_FALSE(guard_fired);
        for (auto& d : ds) {
            CHECK(d.done);
            CHECK(d.result == CURLE_ABORTED_BY_CALLBACK);
            CHECK(d.refused == errc::fd_out_of_range);
            CHECK(d.took < milliseconds(1000));
        }
    }
    for (int fd : held) close(fd);
    setrlimit(RLIMIT_NOFILE, &old);
}
