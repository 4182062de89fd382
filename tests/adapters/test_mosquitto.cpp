// The libmosquitto adapter against a real broker (/usr/sbin/mosquitto) on a
// free loopback port, started and stopped by each test.
#include <microloop/adapters/mosquitto.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
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
using microloop::adapters::mosquitto_adapter;
using microloop::adapters::mosquitto_event;
using microloop::adapters::mosquitto_status;

namespace {

typedef microloop::loop<8, 8> test_loop;
typedef mosquitto_adapter<test_loop> adapter;

int free_port() {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t len = sizeof a;
    getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
    close(s);
    return ntohs(a.sin_port);
}

bool port_open(int port) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<uint16_t>(port));
    const bool ok = connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    close(s);
    return ok;
}

// A mosquitto broker on 127.0.0.1:port, with a generated configuration.
struct broker {
    int port;
    pid_t pid;
    std::string dir, conf;
    broker() : port(free_port()), pid(-1) {
        char tmpl[] = "/tmp/ml-mqtt-XXXXXX";
        dir = mkdtemp(tmpl);
        conf = dir + "/mosquitto.conf";
        FILE* f = fopen(conf.c_str(), "w");
        fprintf(f, "listener %d 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\npersistence false\n", port);
        fclose(f);
        start();
    }
    ~broker() {
        kill_now();
        unlink(conf.c_str());
        rmdir(dir.c_str());
    }
    void start() {
        pid = fork();
        if (pid == 0) {
            int null = open("/dev/null", O_RDWR);
            dup2(null, 1);
            dup2(null, 2);
            execl("/usr/sbin/mosquitto", "mosquitto", "-c", conf.c_str(), static_cast<char*>(nullptr));
            _exit(127);
        }
        const steady_clock::time_point end = steady_clock::now() + seconds(5);
        while (!port_open(port) && steady_clock::now() < end) usleep(10000);
        REQUIRE(port_open(port));
    }
    void kill_now() {
        if (pid > 0) {
            kill(pid, SIGKILL);
            waitpid(pid, nullptr, 0);
        }
        pid = -1;
    }
};

struct lib_init {
    lib_init() { mosquitto_lib_init(); }
    ~lib_init() { mosquitto_lib_cleanup(); }
} the_lib;

// Runs the loop until stop() or `limit`; false on the time-out.
bool run_for(test_loop& loop, milliseconds limit) {
    bool timed_out = false;
    struct ctx {
        test_loop* loop;
        bool* flag;
    };
    static ctx c;
    c.loop = &loop;
    c.flag = &timed_out;
    microloop::timer_handle guard = loop.after(limit, [](microloop::timer_event) {
        *c.flag = true;
        c.loop->stop();
    });
    loop.run();
    loop.cancel(guard);
    return !timed_out;
}

} // namespace

// ---- 10,000 QoS-1 messages through the broker and back -----------------------

namespace {
const unsigned kMessages = 10000;
struct flood {
    test_loop* loop;
    std::vector<unsigned> seen;
    unsigned received, duplicates, acked;
    flood() : loop(nullptr), seen(kMessages, 0), received(0), duplicates(0), acked(0) {}
    void check_done() {
        if (received == kMessages && acked == kMessages) loop->stop();
    }
};
} // namespace

TEST_CASE("mosquitto: 10,000 QoS-1 messages to a topic the client subscribes to arrive once each", "[adapters][mosquitto]") {
    broker b;
    test_loop loop;
    flood st;
    st.loop = &loop;
    struct mosquitto* m = mosquitto_new(nullptr, true, &st);
    REQUIRE(m != nullptr);
    mosquitto_connect_callback_set(m, [](struct mosquitto* mq, void*, int rc) {
        REQUIRE(rc == 0);
        mosquitto_subscribe(mq, nullptr, "ml/flood", 1);
    });
    mosquitto_subscribe_callback_set(m, [](struct mosquitto* mq, void*, int, int, const int*) {
        for (unsigned i = 0; i < kMessages; ++i) {
            char buf[16];
            const int n = snprintf(buf, sizeof buf, "%u", i);
            REQUIRE(mosquitto_publish(mq, nullptr, "ml/flood", n, buf, 1, false) == MOSQ_ERR_SUCCESS);
        }
    });
    mosquitto_publish_callback_set(m, [](struct mosquitto*, void* u, int) {
        flood* s = static_cast<flood*>(u);
        ++s->acked;
        s->check_done();
    });
    mosquitto_message_callback_set(m, [](struct mosquitto*, void* u, const struct mosquitto_message* msg) {
        flood* s = static_cast<flood*>(u);
        const unsigned seq = static_cast<unsigned>(strtoul(std::string(static_cast<const char*>(msg->payload),
                                                                       static_cast<size_t>(msg->payloadlen)).c_str(),
                                                           nullptr, 10));
        if (seq < kMessages) {
            if (s->seen[seq]++) ++s->duplicates;
            else ++s->received;
        }
        s->check_done();
    });
    {
        adapter mqtt(loop, m);
        REQUIRE(mqtt.connect("127.0.0.1", b.port, 30) == MOSQ_ERR_SUCCESS);
        CHECK(mqtt.state() == mosquitto_status::attached);
        CHECK(run_for(loop, seconds(30)));
        CHECK(st.received == kMessages);
        CHECK(st.duplicates == 0);
        CHECK(st.acked == kMessages);
        mqtt.disconnect();
        loop.poll();
    }
    mosquitto_destroy(m);
}

// ---- 16 MiB published from a callback: drained by the write interest ------------

namespace {
struct big {
    test_loop* loop;
    adapter* mqtt;
    steady_clock::time_point sent;
    double seconds_taken;
    unsigned long misc_at_sent, misc_at_ack;
    bool acked;
    std::vector<char> payload;
};
} // namespace

TEST_CASE("mosquitto: a 16 MiB publish drains without waiting for the keepalive tick", "[adapters][mosquitto]") {
    broker b;
    test_loop loop;
    big st;
    st.loop = &loop;
    st.acked = false;
    st.seconds_taken = 0;
    st.misc_at_sent = st.misc_at_ack = 0;
    st.payload.assign(16u << 20, 'x');
    struct mosquitto* m = mosquitto_new(nullptr, true, &st);
    REQUIRE(m != nullptr);
    // Published from on_connect, inside the adapter's read: libmosquitto only
    // queues it, so every byte goes out through the write interest.
    mosquitto_connect_callback_set(m, [](struct mosquitto* mq, void* u, int) {
        big* s = static_cast<big*>(u);
        s->sent = steady_clock::now();
        s->misc_at_sent = s->mqtt->misc_calls();
        REQUIRE(mosquitto_publish(mq, nullptr, "ml/big", static_cast<int>(s->payload.size()), s->payload.data(), 1,
                                  false) == MOSQ_ERR_SUCCESS);
    });
    mosquitto_publish_callback_set(m, [](struct mosquitto*, void* u, int) {
        big* s = static_cast<big*>(u);
        s->seconds_taken = duration<double>(steady_clock::now() - s->sent).count();
        s->misc_at_ack = s->mqtt->misc_calls();
        s->acked = true;
        s->loop->stop();
    });
    {
        adapter mqtt(loop, m);
        st.mqtt = &mqtt;
        REQUIRE(mqtt.connect("127.0.0.1", b.port, 30) == MOSQ_ERR_SUCCESS);
        CHECK(run_for(loop, seconds(10)));
        REQUIRE(st.acked);
        INFO("16 MiB acknowledged after " << st.seconds_taken << " s");
        CHECK(st.misc_at_ack == st.misc_at_sent); // no keepalive tick was needed
        CHECK(st.seconds_taken < 0.8);
        mqtt.disconnect();
        loop.poll();
    }
    mosquitto_destroy(m);
}

// ---- the broker killed and restarted ----------------------------------------------

namespace {
struct restart {
    test_loop* loop;
    broker* b;
    unsigned connects, disconnects_reported, lost, attached, seq, published_at_connect, after_restart;
    bool killed;
    int disconnect_rc;
};
restart* g_restart;
} // namespace

TEST_CASE("mosquitto: the broker killed and restarted: reported, reconnected, publishing goes on", "[adapters][mosquitto]") {
    broker b;
    test_loop loop;
    restart st = {&loop, &b, 0, 0, 0, 0, 0, 0, 0, false, 0};
    g_restart = &st;
    struct mosquitto* m = mosquitto_new(nullptr, true, &st);
    REQUIRE(m != nullptr);
    mosquitto_connect_callback_set(m, [](struct mosquitto* mq, void* u, int) {
        restart* s = static_cast<restart*>(u);
        ++s->connects;
        s->published_at_connect = s->seq;
        mosquitto_subscribe(mq, nullptr, "ml/restart", 1);
    });
    mosquitto_disconnect_callback_set(m, [](struct mosquitto*, void* u, int rc) {
        restart* s = static_cast<restart*>(u);
        ++s->disconnects_reported;
        s->disconnect_rc = rc;
    });
    mosquitto_message_callback_set(m, [](struct mosquitto*, void* u, const struct mosquitto_message* msg) {
        restart* s = static_cast<restart*>(u);
        const unsigned seq = static_cast<unsigned>(atoi(std::string(static_cast<const char*>(msg->payload),
                                                                    static_cast<size_t>(msg->payloadlen)).c_str()));
        if (!s->killed && seq >= 5) {
            s->killed = true;
            s->b->kill_now(); // the broker vanishes mid-stream
        } else if (s->connects == 2 && seq >= s->published_at_connect) {
            if (++s->after_restart == 10) s->loop->stop();
        }
    });
    adapter::options opt;
    opt.reconnect_min = milliseconds(50);
    opt.reconnect_max = milliseconds(200);
    {
        adapter mqtt(loop, m, opt);
        mqtt.on_status([](const mosquitto_event& ev) {
            if (ev.status == mosquitto_status::attached) ++g_restart->attached;
            if (ev.status == mosquitto_status::lost) {
                CHECK(ev.retry_in > milliseconds(0));
                // The first loss: the broker comes back after a few failed attempts.
                if (++g_restart->lost == 1)
                    g_restart->loop->after(milliseconds(300), [](microloop::timer_event) { g_restart->b->start(); });
            }
        });
        REQUIRE(mqtt.connect("127.0.0.1", b.port, 30) == MOSQ_ERR_SUCCESS);
        microloop::timer_handle pub = loop.every(milliseconds(10), [m](microloop::timer_event) {
            char buf[16];
            const int n = snprintf(buf, sizeof buf, "%u", g_restart->seq++);
            mosquitto_publish(m, nullptr, "ml/restart", n, buf, 1, false);
        });
        CHECK(run_for(loop, seconds(15)));
        loop.cancel(pub);
        CHECK(st.killed);
        CHECK(st.lost >= 1);
        CHECK(st.disconnects_reported >= 1);
        CHECK(st.disconnect_rc != 0);
        CHECK(st.connects == 2);
        CHECK(st.attached >= 2);
        CHECK(st.after_restart >= 10); // the read batch may bring a few more after stop()
        mqtt.disconnect();
        loop.poll();
    }
    mosquitto_destroy(m);
}

// ---- a socket the loop cannot watch --------------------------------------------

namespace {
struct refusal {
    unsigned disconnects;
    int rc;
};
void count_disconnect(struct mosquitto*, void* u, int rc) {
    refusal* r = static_cast<refusal*>(u);
    ++r->disconnects;
    r->rc = rc;
}
} // namespace

TEST_CASE("mosquitto: a full fd table fails the connection at once, with the reason", "[adapters][mosquitto]") {
    broker b;
    microloop::loop<1, 4> loop;
    int p[2];
    REQUIRE(pipe(p) == 0);
    microloop::io_handle other = loop.watch(p[0], microloop::readable, [](microloop::io_event) {});
    REQUIRE(other);
    refusal r = {0, 0};
    struct mosquitto* m = mosquitto_new(nullptr, true, &r);
    mosquitto_disconnect_callback_set(m, count_disconnect);
    {
        mosquitto_adapter<microloop::loop<1, 4> > mqtt(loop, m);
        mosquitto_event last = {mosquitto_status::idle, 0, microloop::error_code(), 0, milliseconds(0)};
        static mosquitto_event* lastp;
        lastp = &last;
        mqtt.on_status([](const mosquitto_event& ev) { *lastp = ev; });
        mqtt.connect("127.0.0.1", b.port, 30);
        CHECK(mqtt.state() == mosquitto_status::failed);
        CHECK(last.status == mosquitto_status::failed);
        CHECK(last.loop_error == microloop::errc::table_full);
        CHECK(mqtt.last_error() == microloop::errc::table_full);
        CHECK(mosquitto_socket(m) == -1);
        CHECK(r.disconnects == 1);
        CHECK(r.rc != 0);
        CHECK(mqtt.fd() == -1);
        CHECK(loop.run_once(milliseconds(0)) == microloop::errc::ok); // no spin, nothing pending from it
    }
    mosquitto_destroy(m);
    loop.unwatch(other);
    close(p[0]);
    close(p[1]);
}

TEST_CASE("mosquitto: a socket at or above FD_SETSIZE fails the connection at once, with the reason",
          "[adapters][mosquitto]") {
    broker b;
    rlimit old;
    getrlimit(RLIMIT_NOFILE, &old);
    rlimit more = old;
    if (more.rlim_cur < FD_SETSIZE + 64) more.rlim_cur = FD_SETSIZE + 64;
    if (more.rlim_max != RLIM_INFINITY && more.rlim_cur > more.rlim_max) { WARN("RLIMIT_NOFILE too low: skipped"); return; }
    REQUIRE(setrlimit(RLIMIT_NOFILE, &more) == 0);
    test_loop loop; // its own fds first
    std::vector<int> filler;
    for (;;) { // occupy every fd below FD_SETSIZE
        int fd = open("/dev/null", O_RDONLY);
        REQUIRE(fd >= 0);
        if (fd >= FD_SETSIZE) {
            close(fd);
            break;
        }
        filler.push_back(fd);
    }
    refusal r = {0, 0};
    struct mosquitto* m = mosquitto_new(nullptr, true, &r);
    mosquitto_disconnect_callback_set(m, count_disconnect);
    {
        adapter mqtt(loop, m);
        mqtt.connect("127.0.0.1", b.port, 30);
        CHECK(mqtt.state() == mosquitto_status::failed);
        CHECK(mqtt.last_error() == microloop::errc::fd_out_of_range);
        CHECK(mosquitto_socket(m) == -1);
        CHECK(r.disconnects == 1);
        CHECK(r.rc != 0);
    }
    mosquitto_destroy(m);
    for (size_t i = 0; i < filler.size(); ++i) close(filler[i]);
    setrlimit(RLIMIT_NOFILE, &old);
}
