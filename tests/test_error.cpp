// error_code and errc: every code has a message, codes compare, and a
// failed handle carries its error.
#include <microloop.hpp>

#include <errno.h>
#include <string.h>

#include "catch.hpp"

using microloop::errc;

TEST_CASE("error codes have messages and compare", "[error]") {
    for (int i = 0; i <= static_cast<int>(errc::canceled); ++i) {
        const char* m = microloop::message(static_cast<errc>(i));
        REQUIRE(m);
        CHECK(strlen(m) > 0);
        CHECK(strcmp(m, "unknown error") != 0);
    }
    microloop::error_code ok, bad(errc::bad_fd), sys(errc::system, EIO);
    CHECK(!ok);
    CHECK(bad);
    CHECK(bad == errc::bad_fd);
    CHECK(bad != errc::ok);
    CHECK(sys.sys() == EIO);
    CHECK(sys != microloop::error_code(errc::system, EAGAIN));

    microloop::io_handle none;
    CHECK(!none);
    CHECK(none.error() == errc::stale_handle);
    microloop::timer_handle failed(errc::table_full);
    CHECK(!failed);
    CHECK(failed.error() == errc::table_full);
}
