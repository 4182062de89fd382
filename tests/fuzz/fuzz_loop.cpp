// tests/fuzz/fuzz_loop.cpp - libFuzzer target: API sequences chosen by the
// fuzzer's bytes, checked by the torture suite's model (tests/model.hpp):
// fd watchers on real pipes, timers in virtual time (manual_clock),
// continuations. Each byte is one choice: which operation, then its
// arguments; when the bytes run out, everything is removed and the tables
// must be empty. No signals or children here (process-wide state).
//
//   make fuzz                  build into $(BUILD)/fuzz/ and run for 30 s
//   make fuzz FUZZ_TIME=600    longer
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "../model.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    model::chooser c = model::chooser::bytes(data, size);
    model::world w(c);
    if (!w.ready()) return 0; // out of fds: not the loop's fault
    while (!c.exhausted() && !w.failed()) w.step();
    w.finish();
    if (w.failed()) {
        fprintf(stderr, "model mismatch after %llu steps: %s\n", static_cast<unsigned long long>(w.count().steps),
                w.message());
        abort();
    }
    return 0;
}
