// Posting work to a loop from other threads: many posters, a full mailbox,
// close() from a callback and racing posts.
#include "catch.hpp"

#include <microloop.hpp>
#include <microloop/mailbox.hpp>

#include <pthread.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "test_util.hpp"

using namespace std::chrono;
using microloop::errc;
using test::scale;

TEST_CASE("mailbox: posts from several threads all run, in the loop's thread, in order per poster", "[thread]") {
    microloop::loop<> loop;
    // A message is a pointer and two ints: 12 or 16 bytes, more than the
    // default two pointers on 32-bit targets, so the slot size is given.
    microloop::mailbox<64, 16> box(loop);
    const int threads = 4, per_thread = 2000;
    struct state {
        std::thread::id loop_thread;
        int got;
        int last[4];
        bool in_order, on_loop_thread;
    } st = {std::this_thread::get_id(), 0, {-1, -1, -1, -1}, true, true};
    struct msg {
        state* st;
        int who, seq;
        void operator()() const {
            if (std::this_thread::get_id() != st->loop_thread) st->on_loop_thread = false;
            if (seq != st->last[who] + 1) st->in_order = false;
            st->last[who] = seq;
            ++st->got;
        }
    };
    std::atomic<int> refused(0);
    std::thread workers[threads];
    for (int t = 0; t < threads; ++t)
        workers[t] = std::thread([&box, &st, &refused, t] {
            for (int i = 0; i < per_thread; ++i) {
                msg m = {&st, t, i};
                // A full mailbox refuses instead of blocking: retry.
                while (box.post(m) == microloop::errc::table_full) {
                    refused.fetch_add(1);
                    std::this_thread::yield();
                }
            }
        });
    while (st.got < threads * per_thread) REQUIRE_FALSE(loop.run_once(seconds(10)));
    for (int t = 0; t < threads; ++t) workers[t].join();
    CHECK(st.got == threads * per_thread);
    CHECK(st.in_order);
    CHECK(st.on_loop_thread);
}

TEST_CASE("mailbox: a full mailbox refuses the post and recovers", "[thread]") {
    microloop::loop<> loop;
    microloop::mailbox<4> box(loop);
    int ran = 0;
    for (int i = 0; i < 4; ++i) REQUIRE_FALSE(box.post([&ran] { ++ran; }));
    CHECK(box.post([&ran] { ++ran; }) == microloop::errc::table_full);
    REQUIRE_FALSE(loop.poll());
    CHECK(ran == 4);
    CHECK_FALSE(box.post([&ran] { ++ran; }));
    REQUIRE_FALSE(loop.poll());
    CHECK(ran == 5);
}

TEST_CASE("mailbox: a post wakes a loop blocked with nothing else to do", "[thread]") {
    microloop::loop<> loop;
    microloop::mailbox<> box(loop);
    bool stopped_by_post = false;
    std::thread poster([&] {
        std::this_thread::sleep_for(milliseconds(50));
        box.post([&] {
            stopped_by_post = true;
            loop.stop();
        });
    });
    // The mailbox keeps run() running although no fd or timer exists.
    CHECK(loop.active() == 1);
    CHECK_FALSE(loop.run());
    poster.join();
    CHECK(stopped_by_post);
    box.close();
    CHECK(loop.active() == 0);
    CHECK_FALSE(loop.run()); // returns at once: nothing left
}

TEST_CASE("mailbox: posting more than its capacity runs everything over later iterations", "[thread]") {
    microloop::loop<> loop;
    microloop::mailbox<8> box(loop);
    int ran = 0;
    int posted = 0;
    // Refill as the loop drains: the drain is bounded per wake-up and comes
    // back for the rest.
    for (int round = 0; round < 10; ++round) {
        while (!box.post([&ran] { ++ran; })) ++posted;
        REQUIRE_FALSE(loop.poll());
    }
    while (ran < posted) REQUIRE_FALSE(loop.run_once(seconds(1)));
    CHECK(ran == posted);
    CHECK(posted >= 80);
}

// ---- many posters, close() from a callback, posts racing close() --------------------

namespace {

// What one posting thread's items report to the loop thread.
struct order_log {
    pthread_t loop_thread;
    long got[4];
    long last[4];
    bool in_order, on_loop_thread;
    void init() {
        loop_thread = pthread_self();
        for (int i = 0; i < 4; ++i) {
            got[i] = 0;
            last[i] = -1;
        }
        in_order = on_loop_thread = true;
    }
    void saw(int who, long seq) {
        if (!pthread_equal(pthread_self(), loop_thread)) on_loop_thread = false;
        if (seq != last[who] + 1) in_order = false; // also catches an item run twice
        last[who] = seq;
        ++got[who];
    }
};

struct item {
    order_log* log;
    int who;
    int seq;
    void operator()() const { log->saw(who, seq); }
};

} // namespace

TEST_CASE("mailbox: 4 threads post 100,000 items each: all run once, in order per thread", "[pool][thread]") {
    microloop::loop<> loop;
    microloop::mailbox<256> box(loop);
    const int threads = 4;
    const int per_thread = 100000 / scale();
    order_log log;
    log.init();
    std::atomic<long> refused(0);
    std::thread posters[threads];
    for (int t = 0; t < threads; ++t)
        posters[t] = std::thread([&box, &log, &refused, t, per_thread] {
            long mine = 0;
            for (int i = 0; i < per_thread; ++i) {
                item m = {&log, t, i};
                while (box.post(m) == microloop::errc::table_full) { // refused, not blocked: retry
                    ++mine;
                    std::this_thread::yield();
                }
            }
            refused.fetch_add(mine);
        });
    long total = 0;
    while (total < long(threads) * per_thread) {
        REQUIRE_FALSE(loop.run_once(seconds(10)));
        total = log.got[0] + log.got[1] + log.got[2] + log.got[3];
    }
    for (int t = 0; t < threads; ++t) posters[t].join();
    REQUIRE_FALSE(loop.poll()); // nothing more arrives
    for (int t = 0; t < threads; ++t) {
        CHECK(log.got[t] == per_thread);
        CHECK(log.last[t] == per_thread - 1);
    }
    CHECK(log.in_order);
    CHECK(log.on_loop_thread);
    INFO("mailbox full, post retried: " << refused.load() << " times");
    CHECK(refused.load() >= 0);
}

TEST_CASE("mailbox: close() from inside a posted callback drops the rest", "[pool][thread]") {
    microloop::loop<> loop;
    microloop::mailbox<16> box(loop);
    struct state {
        microloop::mailbox<16>* box;
        int ran;
        size_t dropped;
    } st = {&box, 0, 99};
    for (int i = 0; i < 10; ++i)
        REQUIRE_FALSE(box.post([&st, i] {
            ++st.ran;
            if (i == 2) st.dropped = st.box->close();
        }));
    CHECK(loop.active() == 1);
    REQUIRE_FALSE(loop.poll());
    CHECK(st.ran == 3);
    CHECK(st.dropped == 7);
    CHECK(box.post([&st] { ++st.ran; }) == microloop::errc::canceled);
    CHECK(box.close() == 0);
    CHECK(loop.active() == 0);
    CHECK_FALSE(loop.run()); // nothing keeps it running
    CHECK(st.ran == 3);
}

TEST_CASE("mailbox: posts racing close(): each one ran, was refused or was counted as dropped", "[pool][thread]") {
    for (int variant = 0; variant < 2; ++variant) {
        CAPTURE(variant); // 0: close() between iterations; 1: from inside a posted callback
        microloop::loop<> loop;
        microloop::mailbox<64> box(loop);
        const int threads = 4;
        order_log log;
        log.init();
        std::atomic<long> accepted(0), canceled(0);
        std::atomic<bool> go(false);
        std::thread posters[threads];
        for (int t = 0; t < threads; ++t)
            posters[t] = std::thread([&, t] {
                while (!go.load()) std::this_thread::yield();
                long ok = 0;
                for (int i = 0;; ++i) {
                    item m = {&log, t, i};
                    microloop::error_code e;
                    while ((e = box.post(m)) == microloop::errc::table_full) std::this_thread::yield();
                    if (e == microloop::errc::canceled) break; // the mailbox is closed: every later post too
                    if (e) return;                              // unexpected: shows as a count mismatch
                    ++ok;
                }
                accepted.fetch_add(ok);
                canceled.fetch_add(1);
            });
        go.store(true);
        size_t dropped = 0;
        const long close_after = 20000 / scale();
        bool closed = false;
        while (!closed) {
            REQUIRE_FALSE(loop.run_once(seconds(10)));
            long total = log.got[0] + log.got[1] + log.got[2] + log.got[3];
            if (total < close_after) continue;
            if (variant == 0) {
                dropped = box.close();
                closed = true;
            } else {
                struct closer {
                    microloop::mailbox<64>* box;
                    size_t* dropped;
                    void operator()() const { *dropped = box->close(); }
                };
                closer c = {&box, &dropped};
                while (box.post(c) == microloop::errc::table_full) REQUIRE_FALSE(loop.poll());
                while (loop.active() > 0) REQUIRE_FALSE(loop.run_once(seconds(10)));
                closed = true;
            }
        }
        for (int t = 0; t < threads; ++t) posters[t].join();
        REQUIRE_FALSE(loop.poll());
        long ran = log.got[0] + log.got[1] + log.got[2] + log.got[3];
        CHECK(canceled.load() == threads);
        CHECK(accepted.load() == ran + long(dropped));
        CHECK(log.in_order);
        CHECK(log.on_loop_thread);
        CHECK(loop.active() == 0);
    }
}

// ---- a closed mailbox ---------------------------------------------------------------

TEST_CASE("a closed mailbox refuses posts instead of touching a detached loop", "[robust][thread]") {
    microloop::loop<1, 1> loop;
    microloop::mailbox<4> box(loop);
    int ran = 0;
    REQUIRE(!box.post([&ran] { ++ran; }));
    REQUIRE(!loop.poll());
    CHECK(ran == 1);
    box.close();
    box.close(); // twice is fine
    CHECK(box.post([&ran] { ++ran; }) == errc::canceled); // before: a null loop pointer
    CHECK(loop.active() == 0);
}

TEST_CASE("mailbox: a callback that posts and runs a nested poll() runs once; every later post runs or is counted",
          "[robust][thread]") {
    microloop::loop<2, 2> loop;
    microloop::mailbox<4> box(loop);
    struct state {
        microloop::loop<2, 2>* loop;
        microloop::mailbox<4>* box;
        int first, second, later;
    } st = {&loop, &box, 0, 0, 0};
    REQUIRE(!box.post([&st] {
        ++st.first;
        REQUIRE(!st.box->post([&st] { ++st.second; }));
        CHECK(!st.loop->poll()); // runs the second post, not this one again
    }));
    REQUIRE(!loop.poll());
    REQUIRE(st.first == 1);
    REQUIRE(st.second == 1);
    // The ring is consistent: posts that wrap it all run, none spins.
    for (int round = 0; round < 3; ++round) {
        for (int i = 0; i < 4; ++i) REQUIRE(!box.post([&st] { ++st.later; }));
        CHECK(box.post([&st] { ++st.later; }) == errc::table_full);
        REQUIRE(!loop.poll());
        CHECK(st.later == 4 * (round + 1));
    }
    REQUIRE(!box.post([&st] { ++st.later; }));
    CHECK(box.close() == 1); // counted, not lost
    CHECK(st.later == 12);
}

TEST_CASE("mailbox: close() from a callback inside a nested poll() drops the rest and counts each once",
          "[robust][thread]") {
    microloop::loop<2, 2> loop;
    microloop::mailbox<8> box(loop);
    struct state {
        microloop::loop<2, 2>* loop;
        microloop::mailbox<8>* box;
        int runs;
        size_t dropped;
    } st = {&loop, &box, 0, 0};
    REQUIRE(!box.post([&st] {
        ++st.runs;
        CHECK(!st.loop->poll()); // runs the next post, which closes
    }));
    REQUIRE(!box.post([&st] {
        ++st.runs;
        st.dropped = st.box->close();
    }));
    for (int i = 0; i < 3; ++i) REQUIRE(!box.post([&st] { ++st.runs; }));
    REQUIRE(!loop.poll());
    CHECK(st.runs == 2);
    CHECK(st.dropped == 3);
    CHECK(box.close() == 0);
}
