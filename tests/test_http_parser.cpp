// The request parser of examples/http_file_server.cpp (examples/http_parser.hpp):
// fixed cases, then randomized input. Every input sits in a heap block of
// exactly its size, so under -fsanitize=address a read past the end is caught.
#include "../examples/http_parser.hpp"

#include <stdint.h>
#include <string.h>

#include <random>
#include <string>
#include <vector>

#include "catch.hpp"

namespace {

const size_t max_line = 1024, max_head = 4096;

http::parse_status parse(const std::string& s, http::request& r) {
    std::vector<char> exact(s.begin(), s.end()); // exactly s.size() bytes
    http::parse_status st = http::parse_request(exact.data(), exact.size(), max_line, max_head, r);
    if (st == http::parse_status::complete) { // pointers back into s
        const char* base = exact.data();
        r.target = s.data() + (r.target - base);
        if (r.range) r.range = s.data() + (r.range - base);
        if (r.if_range) r.if_range = s.data() + (r.if_range - base);
    }
    return st;
}

// What must hold for any input at all.
void check_invariants(const char* buf, size_t len, http::parse_status st, const http::request& r) {
    if (st != http::parse_status::complete) return;
    REQUIRE(r.head_len <= len);
    REQUIRE(r.head_len <= max_head);
    REQUIRE(r.target >= buf);
    REQUIRE(r.target_len > 0);
    REQUIRE(r.target + r.target_len <= buf + r.head_len);
    if (r.range) REQUIRE(r.range + r.range_len <= buf + r.head_len);
    if (r.if_range) REQUIRE((r.if_range >= buf && r.if_range + r.if_range_len <= buf + r.head_len));
    REQUIRE((r.minor == 0 || r.minor == 1));
}

} // namespace

TEST_CASE("http parser: well-formed requests", "[http]") {
    http::request r;
    std::string get = "GET /a/b.txt?x=1 HTTP/1.1\r\nHost: x\r\nRange: bytes=1-2 \r\n\r\nGET /next";
    REQUIRE(parse(get, r) == http::parse_status::complete);
    CHECK(r.verb == http::method::get);
    CHECK(std::string(r.target, r.target_len) == "/a/b.txt?x=1");
    CHECK(std::string(r.range, r.range_len) == "bytes=1-2");
    CHECK(r.keep_alive);
    CHECK(!r.has_body);
    CHECK(r.head_len == get.find("GET /next"));

    REQUIRE(parse("HEAD / HTTP/1.0\n\n", r) == http::parse_status::complete); // bare LF
    CHECK(r.verb == http::method::head);
    CHECK(!r.keep_alive);
    REQUIRE(parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", r) == http::parse_status::complete);
    CHECK(r.keep_alive);
    REQUIRE(parse("GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n", r) == http::parse_status::complete);
    CHECK(!r.keep_alive);
    REQUIRE(parse("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", r) == http::parse_status::complete);
    CHECK(r.verb == http::method::other);
    CHECK(r.has_body);
    REQUIRE(parse("\r\nGET / HTTP/1.1\r\n\r\n", r) == http::parse_status::complete); // a stray CRLF first
}

TEST_CASE("http parser: malformed and oversized requests", "[http]") {
    http::request r;
    const char* bad[] = {"GET / HTTP/2.0\r\n\r\n", "GET /\r\n\r\n", "GET  / HTTP/1.1\r\n\r\n",
                         "G@T / HTTP/1.1\r\n\r\n", "GET / HTTP/1.1\r\nNo colon\r\n\r\n",
                         "GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", "GET / HTTP/1.1\r\nA : b\r\n\r\n",
                         "GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"};
    for (const char* b : bad) {
        INFO(b);
        CHECK(parse(b, r) == http::parse_status::bad_request);
    }
    CHECK(parse(std::string("GET / HTTP/1.1\r\nA: b\0c\r\n\r\n", 27), r) == http::parse_status::bad_request);
    CHECK(parse("GET /" + std::string(max_line, 'a') + " HTTP/1.1\r\n\r\n", r) == http::parse_status::uri_too_long);
    CHECK(parse("GET /" + std::string(max_line + 10, 'a'), r) == http::parse_status::uri_too_long); // no line end yet
    std::string headers = "GET / HTTP/1.1\r\n";
    while (headers.size() < max_head) headers += "X-Pad: 0123456789\r\n";
    CHECK(parse(headers, r) == http::parse_status::headers_too_large);
    CHECK(parse(headers + "\r\n", r) == http::parse_status::headers_too_large);
    CHECK(parse("GET / HTTP/1.1\r\nHost: x\r\n", r) == http::parse_status::incomplete);
}

TEST_CASE("http parser: paths and ranges", "[http]") {
    char out[64];
    CHECK(http::decode_path("/a%20b?q=%00", 12, out, sizeof out) == 4);
    CHECK(std::string(out) == "/a b");
    CHECK(http::decode_path("/%2e%2E/x", 9, out, sizeof out) == 5);
    CHECK(http::path_climbs(out));
    CHECK(http::decode_path("/a%00", 5, out, sizeof out) == -1);
    CHECK(http::decode_path("/a%2", 4, out, sizeof out) == -1);
    CHECK(http::decode_path("/a%zz", 5, out, sizeof out) == -1);
    CHECK(http::decode_path("a", 1, out, sizeof out) == -1);
    CHECK(!http::path_climbs("/a..b/..c/"));
    CHECK(http::path_climbs("/a/.."));

    uint64_t first = 0, last = 0;
    CHECK(http::parse_range("bytes=0-9", 9, 100, first, last) == http::range_status::ok);
    CHECK((first == 0 && last == 9));
    CHECK(http::parse_range("bytes=90-", 9, 100, first, last) == http::range_status::ok);
    CHECK((first == 90 && last == 99));
    CHECK(http::parse_range("bytes=-10", 9, 100, first, last) == http::range_status::ok);
    CHECK((first == 90 && last == 99));
    CHECK(http::parse_range("bytes=-1000", 11, 100, first, last) == http::range_status::ok);
    CHECK((first == 0 && last == 99));
    CHECK(http::parse_range("bytes=100-", 10, 100, first, last) == http::range_status::unsatisfiable);
    CHECK(http::parse_range("bytes=-0", 8, 100, first, last) == http::range_status::unsatisfiable);
    CHECK(http::parse_range("bytes=5-1", 9, 100, first, last) == http::range_status::none);
    CHECK(http::parse_range("bytes=0-1,3-4", 13, 100, first, last) == http::range_status::none);
    CHECK(http::parse_range("bytes=99999999999999999999999-", 30, 100, first, last) ==
          http::range_status::unsatisfiable);
}

TEST_CASE("http parser: message framing and Host (RFC 9112)", "[http]") {
    http::request r;
    // Two different lengths, or a length with Transfer-Encoding: the body's end is unknown.
    CHECK(parse("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", r) ==
          http::parse_status::bad_request);
    CHECK(parse("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\n", r) ==
          http::parse_status::bad_request);
    CHECK(parse("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", r) ==
          http::parse_status::bad_request);
    CHECK(parse("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", r) ==
          http::parse_status::bad_request);
    CHECK(parse("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n", r) ==
          http::parse_status::bad_request);
    // The same length twice is one length.
    REQUIRE(parse("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n", r) ==
            http::parse_status::complete);
    CHECK(r.has_body);
    REQUIRE(parse("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", r) ==
            http::parse_status::complete);
    CHECK(r.has_body);
    // Host: exactly one in HTTP/1.1, at most one in 1.0.
    REQUIRE(parse("GET / HTTP/1.1\r\nhost: x\r\n\r\n", r) == http::parse_status::complete);
    CHECK(r.hosts == 1);
    CHECK(http::host_ok(r));
    REQUIRE(parse("GET / HTTP/1.1\r\n\r\n", r) == http::parse_status::complete);
    CHECK(r.hosts == 0);
    CHECK(!http::host_ok(r));
    REQUIRE(parse("GET / HTTP/1.1\r\nHost: x\r\nHOST: y\r\n\r\n", r) == http::parse_status::complete);
    CHECK(!http::host_ok(r));
    REQUIRE(parse("GET / HTTP/1.0\r\n\r\n", r) == http::parse_status::complete);
    CHECK(http::host_ok(r));
    REQUIRE(parse("GET / HTTP/1.0\r\nHost: x\r\nHost: x\r\n\r\n", r) == http::parse_status::complete);
    CHECK(!http::host_ok(r));
}

TEST_CASE("http parser: If-Range", "[http]") {
    http::request r;
    // r points into the request text: it must outlive the checks.
    const std::string with_if_range = "GET / HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\nIf-Range:  \"a1-b2\" \r\n\r\n";
    REQUIRE(parse(with_if_range, r) == http::parse_status::complete);
    REQUIRE(r.if_range);
    CHECK(std::string(r.if_range, r.if_range_len) == "\"a1-b2\"");
    REQUIRE(parse("GET / HTTP/1.1\r\nHost: x\r\n\r\n", r) == http::parse_status::complete);
    CHECK(!r.if_range);
    const char* etag = "\"a1-b2\"";
    const char* date = "Sun, 09 Sep 2001 01:46:40 GMT";
    struct {
        const char* value;
        bool matches;
    } cases[] = {{"\"a1-b2\"", true},  {"\"a1-b3\"", false}, {"W/\"a1-b2\"", false}, {"\"a1-b2", false},
                 {"Sun, 09 Sep 2001 01:46:40 GMT", true}, {"Sun, 09 Sep 2001 01:46:41 GMT", false},
                 {"", false}, {"garbage", false}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
        INFO(cases[i].value);
        CHECK(http::if_range_matches(cases[i].value, strlen(cases[i].value), etag, date) == cases[i].matches);
    }
}

TEST_CASE("http parser: randomized input", "[http]") {
    std::mt19937 rng(12345);
    const std::string seeds[] = {
        "GET /index.html HTTP/1.1\r\nHost: example\r\nRange: bytes=0-99\r\nConnection: keep-alive\r\n\r\n",
        "HEAD /a%20b/c?d HTTP/1.0\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        "POST /x HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc"};
    const char alphabet[] = "GETHADPOS /%.:-=,\r\n\t\0abc019HTTP/1.1";
    size_t complete = 0;
    for (int iter = 0; iter < 100000; ++iter) {
        std::string s;
        int kind = static_cast<int>(rng() % 3);
        if (kind == 0) { // random bytes
            s.resize(rng() % 300);
            for (char& c : s) c = static_cast<char>(rng());
        } else if (kind == 1) { // random from a small alphabet: more structure
            s.resize(rng() % 300);
            for (char& c : s) c = alphabet[rng() % (sizeof alphabet - 1)];
        } else { // a valid request, mutated
            s = seeds[rng() % 3];
            for (int m = static_cast<int>(rng() % 4); m > 0 && !s.empty(); --m) {
                size_t at = rng() % s.size();
                switch (rng() % 4) {
                case 0: s[at] = static_cast<char>(rng()); break;
                case 1: s.erase(at, 1 + rng() % 8); break;
                case 2: s.insert(at, 1, alphabet[rng() % (sizeof alphabet - 1)]); break;
                case 3: s.resize(at); break;
                }
            }
        }
        std::vector<char> exact(s.begin(), s.end());
        http::request r;
        http::parse_status st = http::parse_request(exact.data(), exact.size(), 128, 256, r);
        check_invariants(exact.data(), exact.size(), st, r);
        if (st == http::parse_status::complete) {
            ++complete;
            std::vector<char> path(1 + rng() % 64);
            long n = http::decode_path(r.target, r.target_len, path.data(), path.size());
            if (n >= 0) {
                REQUIRE(static_cast<size_t>(n) < path.size());
                REQUIRE(strlen(path.data()) == static_cast<size_t>(n)); // no NUL inside
                (void)http::path_climbs(path.data());
                (void)http::content_type(path.data());
            }
            if (r.range) {
                uint64_t size = rng() % 1000, first = 0, last = 0;
                if (http::parse_range(r.range, r.range_len, size, first, last) == http::range_status::ok)
                    REQUIRE((first <= last && last < size));
            }
            // A request cut anywhere before its end is incomplete, or already an error.
            size_t cut = rng() % r.head_len;
            http::request p;
            std::vector<char> prefix(exact.begin(), exact.begin() + static_cast<long>(cut));
            REQUIRE(http::parse_request(prefix.data(), prefix.size(), 128, 256, p) != http::parse_status::complete);
        }
    }
    CHECK(complete > 1000); // the mutations reach the interesting paths
}
