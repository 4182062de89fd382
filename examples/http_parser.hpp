// http_parser.hpp - the HTTP/1.x request parsing of http_file_server.cpp, on
// its own so that tests/test_http_parser.cpp can feed it random input.
//
// Nothing here allocates or copies: parse_request() points into the caller's
// buffer, and every function is bounded by the lengths it is given. Plain
// C++11, no microloop needed.
#ifndef MICROLOOP_EXAMPLE_HTTP_PARSER_HPP
#define MICROLOOP_EXAMPLE_HTTP_PARSER_HPP

#include <stddef.h>
#include <stdint.h>
#include <string.h>

namespace http {

enum class method { get, head, other };

enum class parse_status {
    incomplete,       // need more bytes
    complete,         // request.head_len bytes make one request head
    bad_request,      // 400
    uri_too_long,     // 414: the request line is over the limit
    headers_too_large // 431: the head is over the limit
};

struct request {
    method verb;
    const char* target; // as sent (still percent-encoded), not NUL-terminated
    size_t target_len;
    int minor;          // HTTP/1.minor: 0 or 1
    bool keep_alive;    // 1.1 unless "Connection: close"; 1.0 only with "keep-alive"
    bool has_body;      // Content-Length > 0 or Transfer-Encoding: the server closes after answering
    const char* range;  // the Range header's value, or nullptr
    size_t range_len;
    const char* if_range; // the If-Range header's value, or nullptr
    size_t if_range_len;
    unsigned hosts;     // Host header lines: see host_ok()
    size_t head_len;    // bytes of the head, through the empty line
};

namespace detail {

inline bool is_tchar(unsigned char c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != nullptr;
}
inline char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }
inline bool iequals(const char* a, size_t alen, const char* b) {
    size_t blen = strlen(b);
    if (alen != blen) return false;
    for (size_t i = 0; i < alen; ++i)
        if (lower(a[i]) != b[i]) return false;
    return true;
}
// Does the comma-separated list v contain token t (lower case)?
inline bool has_token(const char* v, size_t len, const char* t) {
    size_t i = 0;
    while (i < len) {
        while (i < len && (v[i] == ' ' || v[i] == '\t' || v[i] == ',')) ++i;
        size_t s = i;
        while (i < len && v[i] != ',') ++i;
        size_t e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t')) --e;
        if (e > s && iequals(v + s, e - s, t)) return true;
    }
    return false;
}
inline const char* find_lf(const char* p, const char* end) {
    if (p >= end) return nullptr; // memchr must not see a null pointer, even for 0 bytes
    return static_cast<const char*>(memchr(p, '\n', static_cast<size_t>(end - p)));
}

} // namespace detail

// Parses one request head from buf[0, len). The request line may be at most
// max_line bytes (without its line end), the whole head at most max_head.
// Empty lines before the request line are skipped (RFC 9112, 2.2). Lines end
// with CRLF or a bare LF.
inline parse_status parse_request(const char* buf, size_t len, size_t max_line, size_t max_head, request& r) {
    const char* p = buf;
    const char* end = buf + len;
    while (p < end && (*p == '\r' || *p == '\n') && p - buf < 8) ++p; // a few stray line ends
    const char* lf = detail::find_lf(p, end);
    if (!lf) {
        if (static_cast<size_t>(end - p) > max_line) return parse_status::uri_too_long;
        return len >= max_head ? parse_status::headers_too_large : parse_status::incomplete;
    }
    const char* line_end = lf > p && lf[-1] == '\r' ? lf - 1 : lf;
    if (static_cast<size_t>(line_end - p) > max_line) return parse_status::uri_too_long;

    // The head ends at the first empty line.
    const char* q = lf + 1;
    const char* head_end = nullptr;
    while (q < end) {
        const char* l = detail::find_lf(q, end);
        if (!l) break;
        if (l == q || (l == q + 1 && *q == '\r')) {
            head_end = l + 1;
            break;
        }
        q = l + 1;
    }
    if (!head_end) return len >= max_head ? parse_status::headers_too_large : parse_status::incomplete;
    if (static_cast<size_t>(head_end - buf) > max_head) return parse_status::headers_too_large;

    // Request line: METHOD SP TARGET SP HTTP/1.x
    r = request();
    const char* m = p;
    while (m < line_end && detail::is_tchar(static_cast<unsigned char>(*m))) ++m;
    if (m == p || m >= line_end || *m != ' ') return parse_status::bad_request;
    size_t mlen = static_cast<size_t>(m - p);
    r.verb = mlen == 3 && memcmp(p, "GET", 3) == 0    ? method::get
             : mlen == 4 && memcmp(p, "HEAD", 4) == 0 ? method::head
                                                       : method::other;
    const char* t = m + 1;
    const char* te = t;
    while (te < line_end && static_cast<unsigned char>(*te) > ' ' && *te != 0x7f) ++te;
    if (te == t || te >= line_end || *te != ' ') return parse_status::bad_request;
    r.target = t;
    r.target_len = static_cast<size_t>(te - t);
    const char* v = te + 1;
    if (line_end - v != 8 || memcmp(v, "HTTP/1.", 7) != 0 || (v[7] != '0' && v[7] != '1'))
        return parse_status::bad_request;
    r.minor = v[7] - '0';
    bool conn_close = false, conn_keep = false, chunked = false, has_length = false;
    uint64_t length = 0;

    // Header fields: name ":" OWS value OWS
    for (const char* h = lf + 1; h < head_end;) {
        const char* l = detail::find_lf(h, head_end);
        const char* he = l > h && l[-1] == '\r' ? l - 1 : l;
        if (he == h) break; // the empty line
        const char* c = h;
        while (c < he && detail::is_tchar(static_cast<unsigned char>(*c))) ++c;
        if (c == h || c >= he || *c != ':') return parse_status::bad_request; // also obs-fold, space before ':'
        const char* val = c + 1;
        for (const char* x = val; x < he; ++x) {
            unsigned char ch = static_cast<unsigned char>(*x);
            if ((ch < ' ' && ch != '\t') || ch == 0x7f) return parse_status::bad_request;
        }
        while (val < he && (*val == ' ' || *val == '\t')) ++val;
        const char* ve = he;
        while (ve > val && (ve[-1] == ' ' || ve[-1] == '\t')) --ve;
        size_t nlen = static_cast<size_t>(c - h), vlen = static_cast<size_t>(ve - val);
        if (detail::iequals(h, nlen, "connection")) {
            conn_close = conn_close || detail::has_token(val, vlen, "close");
            conn_keep = conn_keep || detail::has_token(val, vlen, "keep-alive");
        } else if (detail::iequals(h, nlen, "range")) {
            r.range = val;
            r.range_len = vlen;
        } else if (detail::iequals(h, nlen, "if-range")) {
            r.if_range = val;
            r.if_range_len = vlen;
        } else if (detail::iequals(h, nlen, "host")) {
            ++r.hosts;
        } else if (detail::iequals(h, nlen, "content-length")) {
            uint64_t n = 0;
            for (const char* x = val; x < ve; ++x) {
                if (*x < '0' || *x > '9') return parse_status::bad_request;
                if (n > (UINT64_MAX - 9) / 10) return parse_status::bad_request; // no body that long
                n = n * 10 + static_cast<uint64_t>(*x - '0');
            }
            if (vlen == 0) return parse_status::bad_request;
            // Two different lengths: where the body ends is not known (RFC 9112, 6.3).
            if (has_length && n != length) return parse_status::bad_request;
            has_length = true;
            length = n;
            if (n) r.has_body = true;
        } else if (detail::iequals(h, nlen, "transfer-encoding")) {
            chunked = true;
            r.has_body = true;
        }
        h = l + 1;
    }
    // Content-Length with Transfer-Encoding: a request smuggling attempt, or
    // a broken client; either way the framing cannot be trusted (RFC 9112, 6.1).
    if (chunked && has_length) return parse_status::bad_request;
    r.keep_alive = r.minor == 1 ? !conn_close : (conn_keep && !conn_close);
    r.head_len = static_cast<size_t>(head_end - buf);
    return parse_status::complete;
}

// RFC 9112, 3.2: an HTTP/1.1 request without a Host header, or any request
// with more than one, is answered 400.
inline bool host_ok(const request& r) { return r.hosts == 1 || (r.hosts == 0 && r.minor == 0); }

inline int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// The path of an origin-form target ("/a%20b?q" -> "/a b"), percent-decoded
// into out (NUL-terminated). -1 if the target is not a path starting with
// '/', has a bad escape, decodes to a NUL byte, or does not fit in out_size.
inline long decode_path(const char* t, size_t len, char* out, size_t out_size) {
    if (len == 0 || t[0] != '/' || out_size == 0) return -1;
    size_t o = 0;
    for (size_t i = 0; i < len && t[i] != '?' && t[i] != '#'; ++i) {
        char c = t[i];
        if (c == '%') {
            if (i + 2 >= len) return -1;
            int hi = hex_value(t[i + 1]), lo = hex_value(t[i + 2]);
            if (hi < 0 || lo < 0) return -1;
            c = static_cast<char>(hi * 16 + lo);
            i += 2;
        }
        if (c == '\0') return -1;
        if (o + 1 >= out_size) return -1;
        out[o++] = c;
    }
    out[o] = '\0';
    return static_cast<long>(o);
}

// Does a decoded path try to climb out: a ".." segment, or a backslash
// (never a separator on Linux, but refused as a hint of an attack)?
inline bool path_climbs(const char* path) {
    const char* s = path;
    for (;;) {
        const char* e = strchr(s, '/');
        size_t n = e ? static_cast<size_t>(e - s) : strlen(s);
        if (n == 2 && s[0] == '.' && s[1] == '.') return true;
        if (!e) break;
        s = e + 1;
    }
    return strchr(path, '\\') != nullptr;
}

enum class range_status { none, ok, unsatisfiable };

// One "bytes=a-b", "bytes=a-" or "bytes=-n" against a file of `size` bytes:
// ok with [first, last] (inclusive), unsatisfiable (416), or none: not a
// single byte range we understand (several ranges, bad syntax), so the whole
// file is sent (RFC 9110, 14.2 lets a server ignore Range).
inline range_status parse_range(const char* v, size_t len, uint64_t size, uint64_t& first, uint64_t& last) {
    if (len < 7 || memcmp(v, "bytes=", 6) != 0) return range_status::none;
    const char* p = v + 6;
    const char* end = v + len;
    const uint64_t max = UINT64_MAX / 10 - 10;
    bool has_a = false, has_b = false;
    uint64_t a = 0, b = 0;
    while (p < end && *p >= '0' && *p <= '9') {
        a = a > max ? UINT64_MAX / 2 : a * 10 + static_cast<uint64_t>(*p - '0');
        has_a = true;
        ++p;
    }
    if (p >= end || *p != '-') return range_status::none;
    ++p;
    while (p < end && *p >= '0' && *p <= '9') {
        b = b > max ? UINT64_MAX / 2 : b * 10 + static_cast<uint64_t>(*p - '0');
        has_b = true;
        ++p;
    }
    if (p != end || (!has_a && !has_b)) return range_status::none; // "bytes=0-1,5-6" too
    if (!has_a) { // the last b bytes
        if (b == 0 || size == 0) return range_status::unsatisfiable;
        first = b >= size ? 0 : size - b;
        last = size - 1;
        return range_status::ok;
    }
    if (has_b && b < a) return range_status::none;
    if (a >= size) return range_status::unsatisfiable;
    first = a;
    last = has_b && b < size - 1 ? b : size - 1;
    return range_status::ok;
}

// Does If-Range's value (v, len) name the representation the server has now,
// so that the Range is honoured (RFC 9110, 13.1.5)? An entity-tag must match
// `etag` by strong comparison (a weak one never does); an HTTP-date must be
// exactly `last_modified`, the Last-Modified the server sends.
inline bool if_range_matches(const char* v, size_t len, const char* etag, const char* last_modified) {
    if (len > 0 && (v[0] == '"' || (len > 1 && v[0] == 'W' && v[1] == '/')))
        return etag[0] == '"' && strlen(etag) == len && memcmp(v, etag, len) == 0;
    return strlen(last_modified) == len && memcmp(v, last_modified, len) == 0;
}

// Content-Type from the file name's extension.
inline const char* content_type(const char* path) {
    static const char* const table[][2] = {
        {"html", "text/html; charset=utf-8"}, {"htm", "text/html; charset=utf-8"},
        {"txt", "text/plain; charset=utf-8"}, {"css", "text/css"},
        {"js", "text/javascript"},            {"json", "application/json"},
        {"png", "image/png"},                 {"jpg", "image/jpeg"},
        {"jpeg", "image/jpeg"},               {"gif", "image/gif"},
        {"svg", "image/svg+xml"},             {"ico", "image/x-icon"},
        {"pdf", "application/pdf"},           {"wasm", "application/wasm"},
    };
    const char* slash = strrchr(path, '/');
    const char* dot = strrchr(slash ? slash : path, '.');
    if (dot)
        for (size_t i = 0; i < sizeof table / sizeof table[0]; ++i)
            if (detail::iequals(dot + 1, strlen(dot + 1), table[i][0])) return table[i][1];
    return "application/octet-stream";
}

} // namespace http

#endif // MICROLOOP_EXAMPLE_HTTP_PARSER_HPP
