// examples/adapters/mosquitto_sensor.cpp - an MQTT sensor on microloop: it
// publishes a reading every second to sensor/<id>/reading and obeys commands
// on sensor/<id>/cmd ("rate <ms>", "quit"). The broker may go away: the
// adapter reports it and reconnects.
//
//     mosquitto_sensor [--host 127.0.0.1] [--port 1883] [--id demo] [--count N]
//     mosquitto_pub -t sensor/demo/cmd -m 'rate 200'
#include <microloop/adapters/mosquitto.hpp>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <string>

using namespace std::chrono;
typedef microloop::loop<8, 8> app_loop;
using microloop::adapters::mosquitto_event;
using microloop::adapters::mosquitto_status;

namespace {
app_loop loop;
std::string topic_reading, topic_cmd;
microloop::timer_handle ticker;
unsigned long readings, count_limit;
struct mosquitto* client;

void publish_reading(microloop::timer_event) {
    char buf[64];
    const double t = static_cast<double>(readings) / 10.0;
    const int n = snprintf(buf, sizeof buf, "{\"seq\":%lu,\"celsius\":%.2f}", readings, 21.0 + 2.0 * sin(t));
    const int rc = mosquitto_publish(client, nullptr, topic_reading.c_str(), n, buf, 1, false);
    if (rc != MOSQ_ERR_SUCCESS) fprintf(stderr, "publish: %s\n", mosquitto_strerror(rc));
    if (++readings == count_limit) loop.stop();
}

void on_connect(struct mosquitto* m, void*, int rc) {
    printf("connected: %s\n", mosquitto_connack_string(rc));
    if (rc == 0) mosquitto_subscribe(m, nullptr, topic_cmd.c_str(), 1); // again after each reconnect
}

void on_disconnect(struct mosquitto*, void*, int rc) {
    printf("disconnected: %s\n", rc ? mosquitto_strerror(rc) : "on request");
}

void on_message(struct mosquitto*, void*, const struct mosquitto_message* msg) {
    std::string cmd(static_cast<const char*>(msg->payload), static_cast<size_t>(msg->payloadlen));
    printf("command: %s\n", cmd.c_str());
    if (cmd == "quit") {
        loop.stop();
    } else if (cmd.compare(0, 5, "rate ") == 0) {
        const long ms = atol(cmd.c_str() + 5);
        if (ms > 0) {
            loop.cancel(ticker);
            ticker = loop.every(milliseconds(ms), publish_reading);
        }
    }
}
} // namespace

int main(int argc, char** argv) {
    const char* host = "127.0.0.1";
    int port = 1883;
    const char* id = "demo";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--host")) host = argv[i + 1];
        else if (!strcmp(argv[i], "--port")) port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--id")) id = argv[i + 1];
        else if (!strcmp(argv[i], "--count")) count_limit = strtoul(argv[i + 1], nullptr, 10);
        else {
            fprintf(stderr, "usage: %s [--host H] [--port P] [--id ID] [--count N]\n", argv[0]);
            return 2;
        }
    }
    topic_reading = std::string("sensor/") + id + "/reading";
    topic_cmd = std::string("sensor/") + id + "/cmd";

    mosquitto_lib_init();
    client = mosquitto_new(nullptr, true, nullptr);
    if (!client) return 1;
    mosquitto_connect_callback_set(client, on_connect);
    mosquitto_disconnect_callback_set(client, on_disconnect);
    mosquitto_message_callback_set(client, on_message);
    int status = 0;
    {
        microloop::adapters::mosquitto_adapter<app_loop> mqtt(loop, client);
        mqtt.on_status([](const mosquitto_event& ev) {
            if (ev.status == mosquitto_status::lost)
                printf("broker lost (%s): retry %u in %lld ms\n", mosquitto_strerror(ev.rc), ev.attempt,
                       static_cast<long long>(ev.retry_in.count()));
            else if (ev.status == mosquitto_status::failed)
                fprintf(stderr, "cannot host the connection: %s\n", ev.loop_error.message());
        });
        const int rc = mqtt.connect(host, port, 30);
        if (rc != MOSQ_ERR_SUCCESS) printf("connect: %s (retrying)\n", mosquitto_strerror(rc));
        ticker = loop.every(seconds(1), publish_reading);
        if (microloop::error_code e = loop.run()) {
            fprintf(stderr, "loop: %s\n", e.message());
            status = 1;
        }
        mqtt.disconnect();
        loop.poll(); // let the DISCONNECT go out
    }
    mosquitto_destroy(client);
    mosquitto_lib_cleanup();
    return status;
}
