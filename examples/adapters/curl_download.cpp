// curl_download.cpp - parallel downloads with libcurl on a microloop loop
// (include/microloop/adapters/curl.hpp).
//
//     curl_download [-o DIR] URL...
//
// Downloads every URL at once, to DIR/<n> (or to /dev/null without -o), and
// prints one line per transfer when it ends: its size, HTTP status and
// result. Exits 1 if any transfer failed.
#include <microloop/adapters/curl.hpp>

#include <stdio.h>
#include <string.h>

namespace {

const int max_urls = 32;

struct transfer {
    const char* url;
    FILE* out;
    CURL* easy;
};

microloop::loop<> loop;
microloop::curl_driver<microloop::loop<>, max_urls> web(loop);
transfer transfers[max_urls];
int failed = 0;

size_t write_out(char* p, size_t one, size_t n, void* u) {
    return fwrite(p, one, n, static_cast<transfer*>(u)->out);
}

void done(microloop::curl_done d) {
    char* p = nullptr;
    curl_easy_getinfo(d.easy, CURLINFO_PRIVATE, &p);
    transfer& t = *reinterpret_cast<transfer*>(p);
    curl_off_t size = 0;
    long status = 0;
    double secs = 0;
    curl_easy_getinfo(d.easy, CURLINFO_SIZE_DOWNLOAD_T, &size);
    curl_easy_getinfo(d.easy, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(d.easy, CURLINFO_TOTAL_TIME, &secs);
    if (d.result != CURLE_OK) ++failed;
    printf("%10lld B  %3ld  %6.3f s  %s  %s%s%s\n", static_cast<long long>(size), status, secs, t.url,
           curl_easy_strerror(d.result), d.refused ? ": " : "", d.refused ? d.refused.message() : "");
    fclose(t.out);
    curl_easy_cleanup(d.easy);
}

} // namespace

int main(int argc, char** argv) {
    const char* dir = nullptr;
    int first = 1;
    if (argc > 2 && strcmp(argv[1], "-o") == 0) {
        dir = argv[2];
        first = 3;
    }
    if (first >= argc || argc - first > max_urls) {
        fprintf(stderr, "usage: curl_download [-o DIR] URL... (at most %d)\n", max_urls);
        return 2;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return 1;
    if (microloop::error_code e = web.last_error()) {
        fprintf(stderr, "curl_multi_init: %s\n", e.message());
        return 1;
    }
    web.on_done(done);
    for (int i = first; i < argc; ++i) {
        transfer& t = transfers[i - first];
        char path[4096];
        if (dir) snprintf(path, sizeof path, "%s/%d", dir, i - first);
        t.url = argv[i];
        t.out = fopen(dir ? path : "/dev/null", "wb");
        t.easy = curl_easy_init();
        if (!t.out || !t.easy) {
            perror("open");
            return 1;
        }
        curl_easy_setopt(t.easy, CURLOPT_URL, t.url);
        curl_easy_setopt(t.easy, CURLOPT_FOLLOWLOCATION, 1L);
        curl_easy_setopt(t.easy, CURLOPT_WRITEFUNCTION, write_out);
        curl_easy_setopt(t.easy, CURLOPT_WRITEDATA, &t);
        curl_easy_setopt(t.easy, CURLOPT_PRIVATE, &t);
        if (microloop::error_code e = web.add(t.easy)) {
            fprintf(stderr, "%s: %s\n", t.url, e.message());
            return 1;
        }
    }
    if (microloop::error_code e = loop.run()) {
        fprintf(stderr, "loop: %s\n", e.message());
        return 1;
    }
    return failed ? 1 : 0;
}
