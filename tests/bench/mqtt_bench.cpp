// tests/bench/mqtt_bench.cpp - QoS-0 messages per second through a local
// broker, one client that subscribes to a topic and publishes to it, driven
// by microloop's adapter or by mosquitto_loop_forever(). The client code is
// the same: on_subscribe publishes a window of W messages; each message that
// arrives publishes the next, until N have arrived.
//
//     mqtt_bench microloop|forever PORT [N] [W]     prints: MODE N SECONDS MSGS_PER_S
#include <microloop/adapters/mosquitto.hpp>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

using namespace std::chrono;

namespace {
typedef microloop::loop<8, 8> bench_loop;
bench_loop loop;
bool use_loop;
unsigned long total = 200000, window = 500, sent, received;
steady_clock::time_point start;
char payload[32] = "0123456789012345678901234567890";

void publish_one(struct mosquitto* m) {
    if (sent < total && mosquitto_publish(m, nullptr, "bench/q0", 32, payload, 0, false) == MOSQ_ERR_SUCCESS) ++sent;
}
void on_connect(struct mosquitto* m, void*, int) { mosquitto_subscribe(m, nullptr, "bench/q0", 0); }
void on_subscribe(struct mosquitto* m, void*, int, int, const int*) {
    start = steady_clock::now();
    for (unsigned long i = 0; i < window; ++i) publish_one(m);
}
void on_message(struct mosquitto* m, void*, const struct mosquitto_message*) {
    if (++received == total) {
        const double s = duration<double>(steady_clock::now() - start).count();
        printf("%s %lu %.4f %.0f\n", use_loop ? "microloop" : "forever", total, s, static_cast<double>(total) / s);
        if (use_loop) loop.stop();
        else mosquitto_disconnect(m);
        return;
    }
    publish_one(m);
}
} // namespace

int main(int argc, char** argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s microloop|forever PORT [N] [W]\n", argv[0]);
        return 2;
    }
    use_loop = !strcmp(argv[1], "microloop");
    const int port = atoi(argv[2]);
    if (argc > 3) total = strtoul(argv[3], nullptr, 10);
    if (argc > 4) window = strtoul(argv[4], nullptr, 10);
    mosquitto_lib_init();
    struct mosquitto* m = mosquitto_new(nullptr, true, nullptr);
    mosquitto_connect_callback_set(m, on_connect);
    mosquitto_subscribe_callback_set(m, on_subscribe);
    mosquitto_message_callback_set(m, on_message);
    int rc = 0;
    if (use_loop) {
        microloop::adapters::mosquitto_adapter<bench_loop> mqtt(loop, m);
        if (mqtt.connect("127.0.0.1", port, 60) != MOSQ_ERR_SUCCESS) return 1;
        loop.run();
        mqtt.disconnect();
        loop.poll();
    } else {
        if (mosquitto_connect(m, "127.0.0.1", port, 60) != MOSQ_ERR_SUCCESS) return 1;
        rc = mosquitto_loop_forever(m, -1, 1);
    }
    mosquitto_destroy(m);
    mosquitto_lib_cleanup();
    return received == total ? 0 : (rc ? rc : 1);
}
