// examples/adapters/sdbus_service.cpp - a D-Bus service on microloop: it
// exposes org.example.Calc.Add(ii) -> i at /org/example/Calc under the name
// org.example.Calc, then calls it asynchronously and prints the answer.
//
//     sdbus_service [--user | --system | --address unix:path=/run/...] [--serve] [A B]
//     busctl --user call org.example.Calc /org/example/Calc org.example.Calc Add ii 2 3
#include <microloop/adapters/sdbus.hpp>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef microloop::loop<8, 8> app_loop;
using microloop::adapters::sdbus_event;
using microloop::adapters::sdbus_status;

namespace {
app_loop loop;
sd_bus* bus;
bool serve_forever;
int32_t arg_a = 2, arg_b = 3;

int add(sd_bus_message* m, void*, sd_bus_error*) {
    int32_t a = 0, b = 0;
    const int r = sd_bus_message_read(m, "ii", &a, &b);
    if (r < 0) return r;
    return sd_bus_reply_method_return(m, "i", a + b);
}

const sd_bus_vtable calc_vtable[] = {
    SD_BUS_VTABLE_START(0),
    SD_BUS_METHOD("Add", "ii", "i", add, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_VTABLE_END,
};

int on_answer(sd_bus_message* m, void*, sd_bus_error*) {
    int32_t sum = 0;
    if (sd_bus_message_is_method_error(m, nullptr))
        fprintf(stderr, "Add failed: %s\n", sd_bus_message_get_error(m)->message);
    else if (sd_bus_message_read(m, "i", &sum) >= 0)
        printf("org.example.Calc.Add(%d, %d) = %d\n", arg_a, arg_b, sum);
    if (!serve_forever) loop.stop();
    return 0;
}

int on_name(sd_bus_message* m, void*, sd_bus_error*) {
    if (sd_bus_message_is_method_error(m, nullptr)) {
        fprintf(stderr, "cannot own org.example.Calc: %s\n", sd_bus_message_get_error(m)->message);
        loop.stop();
        return 0;
    }
    const int r = sd_bus_call_method_async(bus, nullptr, "org.example.Calc", "/org/example/Calc", "org.example.Calc",
                                           "Add", on_answer, nullptr, "ii", arg_a, arg_b);
    if (r < 0) fprintf(stderr, "call: %s\n", strerror(-r));
    return 0;
}
} // namespace

int main(int argc, char** argv) {
    const char* address = nullptr;
    bool system_bus = false;
    int positional = 0;
    for (int i = 1; i < argc; ++i) {
        if (!strcmp(argv[i], "--address") && i + 1 < argc) address = argv[++i];
        else if (!strcmp(argv[i], "--system")) system_bus = true;
        else if (!strcmp(argv[i], "--user")) system_bus = false;
        else if (!strcmp(argv[i], "--serve")) serve_forever = true;
        else if (positional == 0 && ++positional) arg_a = atoi(argv[i]);
        else if (positional == 1 && ++positional) arg_b = atoi(argv[i]);
        else {
            fprintf(stderr, "usage: %s [--user|--system|--address ADDR] [--serve] [A B]\n", argv[0]);
            return 2;
        }
    }
    int r;
    if (address) {
        r = sd_bus_new(&bus);
        if (r >= 0) r = sd_bus_set_address(bus, address);
        if (r >= 0) r = sd_bus_set_bus_client(bus, 1);
        if (r >= 0) r = sd_bus_start(bus);
    } else {
        r = system_bus ? sd_bus_open_system(&bus) : sd_bus_open_user(&bus);
    }
    if (r < 0) {
        fprintf(stderr, "cannot connect to the bus: %s\n", strerror(-r));
        return 1;
    }
    r = sd_bus_add_object_vtable(bus, nullptr, "/org/example/Calc", "org.example.Calc", calc_vtable, nullptr);
    if (r >= 0) r = sd_bus_request_name_async(bus, nullptr, "org.example.Calc", 0, on_name, nullptr);
    if (r < 0) {
        fprintf(stderr, "setup: %s\n", strerror(-r));
        return 1;
    }
    int status = 0;
    {
        microloop::adapters::sdbus_adapter<app_loop> dbus(loop, bus);
        dbus.on_status([](const sdbus_event& ev) {
            if (ev.status == sdbus_status::lost) {
                fprintf(stderr, "bus lost: %s\n", strerror(-ev.err)); // reconnecting is ours: we just quit
                loop.stop();
            } else if (ev.status == sdbus_status::failed) {
                fprintf(stderr, "cannot host the bus: %s\n", ev.loop_error.message());
            }
        });
        if (microloop::error_code e = dbus.start()) {
            fprintf(stderr, "start: %s\n", e.message());
            status = 1;
        } else if (microloop::error_code e2 = loop.run()) {
            fprintf(stderr, "loop: %s\n", e2.message());
            status = 1;
        }
        if (dbus.state() == sdbus_status::lost) status = 1;
    }
    sd_bus_flush_close_unref(bus);
    return status;
}
