// tests/bench/curl_bench.cpp - 200 downloads of one file from a local HTTP
// server, driven by microloop's curl adapter and by curl's own
// curl_multi_poll() loop, interleaved, in the same run (tests/bench/curl.sh).
//
//     curl_bench URL [downloads = 200] [reps = 5] [connections = 32]
//
// Prints each repetition's wall time, the medians and the ratio adapter/poll.
#include <microloop/adapters/curl.hpp>

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <algorithm>
#include <vector>

namespace {

typedef microloop::loop<256, 8> bench_loop;
bench_loop loop;
size_t bytes = 0;
int bad = 0;

size_t sink(char*, size_t one, size_t n, void*) {
    bytes += one * n;
    return one * n;
}

double now() {
    timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) * 1e-9;
}

CURL* make(const char* url) {
    CURL* e = curl_easy_init();
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, sink);
    return e;
}

double with_adapter(const char* url, int n, long conns) {
    microloop::curl_driver<bench_loop, 256> web(loop);
    curl_multi_setopt(web.multi(), CURLMOPT_MAX_TOTAL_CONNECTIONS, conns);
    web.on_done([](microloop::curl_done d) {
        if (d.result != CURLE_OK) ++bad;
        curl_easy_cleanup(d.easy);
    });
    const double t0 = now();
    for (int i = 0; i < n; ++i) web.add(make(url));
    loop.run();
    return now() - t0;
}

double with_poll(const char* url, int n, long conns) {
    CURLM* m = curl_multi_init();
    curl_multi_setopt(m, CURLMOPT_MAX_TOTAL_CONNECTIONS, conns);
    const double t0 = now();
    for (int i = 0; i < n; ++i) curl_multi_add_handle(m, make(url));
    int running = 1;
    while (running) {
        curl_multi_perform(m, &running);
        int left;
        while (CURLMsg* msg = curl_multi_info_read(m, &left)) {
            if (msg->msg != CURLMSG_DONE) continue;
            if (msg->data.result != CURLE_OK) ++bad;
            curl_multi_remove_handle(m, msg->easy_handle);
            curl_easy_cleanup(msg->easy_handle);
        }
        if (running) curl_multi_poll(m, nullptr, 0, 1000, nullptr);
    }
    const double t = now() - t0;
    curl_multi_cleanup(m);
    return t;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

} // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: curl_bench URL [downloads] [reps] [connections]\n");
        return 2;
    }
    const char* url = argv[1];
    const int n = argc > 2 ? atoi(argv[2]) : 200;
    const int reps = argc > 3 ? atoi(argv[3]) : 5;
    const long conns = argc > 4 ? atol(argv[4]) : 32;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    std::vector<double> a, p;
    for (int r = 0; r < reps; ++r) { // interleaved, the order swapped every repetition
        if (r % 2 == 0) {
            a.push_back(with_adapter(url, n, conns));
            p.push_back(with_poll(url, n, conns));
        } else {
            p.push_back(with_poll(url, n, conns));
            a.push_back(with_adapter(url, n, conns));
        }
        printf("rep %d: adapter %.1f ms, curl_multi_poll %.1f ms\n", r, a.back() * 1e3, p.back() * 1e3);
    }
    const double ma = median(a), mp = median(p);
    printf("curl %d x %s, %ld connections: adapter %.1f ms, curl_multi_poll %.1f ms (medians of %d), ratio %.2fx%s\n",
           n, url, conns, ma * 1e3, mp * 1e3, reps, ma / mp, bad ? " FAILED TRANSFERS" : "");
    printf("bytes %zu, failed %d\n", bytes, bad);
    curl_global_cleanup();
    return bad ? 1 : 0;
}
