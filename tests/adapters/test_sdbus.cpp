// The sd-bus adapter against a private dbus-daemon on a unix socket in a
// temporary directory, started and stopped by each test.
#include <microloop/adapters/sdbus.hpp>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>

#include "../catch.hpp"

using namespace std::chrono;
using microloop::adapters::sdbus_adapter;
using microloop::adapters::sdbus_event;
using microloop::adapters::sdbus_status;

namespace {

typedef microloop::loop<8, 8> test_loop;
typedef sdbus_adapter<test_loop> adapter;

// A dbus-daemon with a private session configuration.
struct bus_daemon {
    pid_t pid;
    std::string dir, conf, socket, address;
    bus_daemon() : pid(-1) {
        char tmpl[] = "/tmp/ml-dbus-XXXXXX";
        dir = mkdtemp(tmpl);
        conf = dir + "/session.conf";
        socket = dir + "/bus";
        address = "unix:path=" + socket;
        FILE* f = fopen(conf.c_str(), "w");
        fprintf(f,
                "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\"\n"
                " \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n"
                "<busconfig>\n  <type>session</type>\n  <listen>%s</listen>\n  <auth>EXTERNAL</auth>\n"
                "  <policy context=\"default\">\n    <allow send_destination=\"*\" eavesdrop=\"true\"/>\n"
                "    <allow eavesdrop=\"true\"/>\n    <allow own=\"*\"/>\n  </policy>\n"
                "  <limit name=\"max_replies_per_connection\">50000</limit>\n"
                "  <limit name=\"max_incoming_bytes\">1000000000</limit>\n"
                "  <limit name=\"max_outgoing_bytes\">1000000000</limit>\n"
                "</busconfig>\n",
                address.c_str());
        fclose(f);
        pid = fork();
        if (pid == 0) {
            int null = open("/dev/null", O_RDWR);
            dup2(null, 1);
            dup2(null, 2);
            const std::string arg = "--config-file=" + conf;
            execlp("dbus-daemon", "dbus-daemon", arg.c_str(), "--nofork", "--print-address", static_cast<char*>(nullptr));
            _exit(127);
        }
        const steady_clock::time_point end = steady_clock::now() + seconds(5);
        struct stat st;
        while (stat(socket.c_str(), &st) != 0 && steady_clock::now() < end) usleep(10000);
        REQUIRE(stat(socket.c_str(), &st) == 0);
    }
    ~bus_daemon() {
        kill_now();
        unlink(socket.c_str());
        unlink(conf.c_str());
        rmdir(dir.c_str());
    }
    void kill_now() {
        if (pid > 0) {
            kill(pid, SIGKILL);
            waitpid(pid, nullptr, 0);
        }
        pid = -1;
    }
};

sd_bus* open_bus(const bus_daemon& d) {
    sd_bus* bus = nullptr;
    REQUIRE(sd_bus_new(&bus) >= 0);
    REQUIRE(sd_bus_set_address(bus, d.address.c_str()) >= 0);
    REQUIRE(sd_bus_set_bus_client(bus, 1) >= 0);
    REQUIRE(sd_bus_start(bus) >= 0);
    return bus;
}

bool run_for(test_loop& loop, milliseconds limit) {
    static bool timed_out;
    static test_loop* lp;
    timed_out = false;
    lp = &loop;
    microloop::timer_handle guard = loop.after(limit, [](microloop::timer_event) {
        timed_out = true;
        lp->stop();
    });
    loop.run();
    loop.cancel(guard);
    return !timed_out;
}

struct calc {
    test_loop* loop;
    sd_bus* bus;
    unsigned answered, right, errors, calls;
    bool reply; // false: the method never answers
};
calc* g;
bool g_named; // the name is ours and the calls are made

int add_method(sd_bus_message* m, void*, sd_bus_error*) {
    int32_t a = 0, b = 0;
    int r = sd_bus_message_read(m, "ii", &a, &b);
    if (r < 0) return r;
    if (!g->reply) return 1; // left unanswered
    return sd_bus_reply_method_return(m, "i", a + b);
}

const sd_bus_vtable calc_vtable[] = {
    SD_BUS_VTABLE_START(0),
    SD_BUS_METHOD("Add", "ii", "i", add_method, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_VTABLE_END,
};

int on_reply(sd_bus_message* m, void* userdata, sd_bus_error*) {
    const int32_t i = static_cast<int32_t>(reinterpret_cast<intptr_t>(userdata));
    ++g->answered;
    if (sd_bus_message_is_method_error(m, nullptr)) {
        ++g->errors;
    } else {
        int32_t sum = -1;
        if (sd_bus_message_read(m, "i", &sum) >= 0 && sum == 3 * i) ++g->right;
    }
    if (g->answered == g->calls) g->loop->stop();
    return 0;
}

int on_name(sd_bus_message* m, void*, sd_bus_error*) {
    REQUIRE(!sd_bus_message_is_method_error(m, nullptr));
    g_named = true;
    for (unsigned i = 0; i < g->calls; ++i) {
        int r = sd_bus_call_method_async(g->bus, nullptr, "org.example.Calc", "/org/example/Calc", "org.example.Calc",
                                         "Add", on_reply, reinterpret_cast<void*>(static_cast<intptr_t>(i)), "ii",
                                         static_cast<int32_t>(i), static_cast<int32_t>(2 * i));
        REQUIRE(r >= 0);
    }
    return 0;
}

void serve(sd_bus* bus) {
    REQUIRE(sd_bus_add_object_vtable(bus, nullptr, "/org/example/Calc", "org.example.Calc", calc_vtable, nullptr) >= 0);
    REQUIRE(sd_bus_request_name_async(bus, nullptr, "org.example.Calc", 0, on_name, nullptr) >= 0);
}

} // namespace

TEST_CASE("sd-bus: 1,000 async calls to a method the same process exposes, all answered right", "[adapters][sdbus]") {
    bus_daemon d;
    test_loop loop;
    sd_bus* bus = open_bus(d);
    calc st = {&loop, bus, 0, 0, 0, 1000, true};
    g = &st;
    serve(bus);
    {
        adapter dbus(loop, bus);
        REQUIRE_FALSE(dbus.start());
        CHECK(dbus.state() == sdbus_status::attached);
        CHECK(run_for(loop, seconds(20)));
        CHECK(st.answered == 1000);
        CHECK(st.right == 1000);
        CHECK(st.errors == 0);
        CHECK(dbus.state() == sdbus_status::attached);
    }
    sd_bus_flush_close_unref(bus);
}

TEST_CASE("sd-bus: the daemon killed: reported, calls in flight fail, no spin, no hang", "[adapters][sdbus]") {
    bus_daemon d;
    test_loop loop;
    sd_bus* bus = open_bus(d);
    calc st = {&loop, bus, 0, 0, 0, 10, false}; // the calls stay unanswered
    g = &st;
    g_named = false;
    serve(bus);
    static sdbus_event last;
    last.status = sdbus_status::idle;
    {
        adapter dbus(loop, bus);
        dbus.on_status([](const sdbus_event& ev) {
            last = ev;
            if (ev.status == sdbus_status::lost) g->loop->stop();
        });
        REQUIRE_FALSE(dbus.start());
        static bus_daemon* dp;
        dp = &d;
        // Once the calls are in flight (the name is ours), the daemon dies.
        microloop::timer_handle killer = loop.every(milliseconds(20), [](microloop::timer_event ev) {
            if (g_named && dp->pid > 0) {
                dp->kill_now();
                g->loop->cancel(ev.handle);
            }
        });
        (void)killer;
        const steady_clock::time_point t0 = steady_clock::now();
        CHECK(run_for(loop, seconds(10))); // stopped by the report, well before the guard
        const double s = duration<double>(steady_clock::now() - t0).count();
        CHECK(s < 5.0);
        CHECK(dbus.state() == sdbus_status::lost);
        CHECK(last.status == sdbus_status::lost);
        CHECK(last.err < 0);
        CHECK(dbus.process_calls() < 1000); // no spin
        CHECK(st.answered == st.calls);     // each call in flight got its error reply
        CHECK(st.errors == st.calls);
        CHECK(loop.active() == 0);
    }
    sd_bus_unref(bus);
}

TEST_CASE("sd-bus: a full fd table is reported as failed, not a hang", "[adapters][sdbus]") {
    bus_daemon d;
    microloop::loop<1, 4> loop;
    int p[2];
    REQUIRE(pipe(p) == 0);
    microloop::io_handle other = loop.watch(p[0], microloop::readable, [](microloop::io_event) {});
    REQUIRE(other);
    sd_bus* bus = open_bus(d);
    {
        sdbus_adapter<microloop::loop<1, 4> > dbus(loop, bus);
        CHECK(dbus.start() == microloop::errc::table_full);
        CHECK(dbus.state() == sdbus_status::failed);
    }
    sd_bus_unref(bus);
    loop.unwatch(other);
    close(p[0]);
    close(p[1]);
}
