// The continuation table: typed state kept between starting an operation and
// finishing it, in fixed inline slots.
#include <microloop/continuation.hpp>

#include <string.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "catch.hpp"

namespace {

struct counted {
    static int live;
    int value;
    explicit counted(int v) : value(v) { ++live; }
    ~counted() { --live; }
};
int counted::live = 0;

struct other {
    int value;
};

struct request {
    int sock;
    size_t len;
    char buf[32];
};

} // namespace

TEST_CASE("continuation table: fill, release, reuse", "[continuation]") {
    microloop::continuation_table<4, 16> table;
    microloop::continuation_id ids[4];
    for (int i = 0; i < 4; ++i) {
        ids[i] = table.emplace<counted>(i * 10);
        REQUIRE(ids[i]);
    }
    CHECK(table.full());
    CHECK(table.size() == 4);
    CHECK(counted::live == 4);

    microloop::continuation_id extra = table.emplace<counted>(99);
    CHECK_FALSE(extra);
    CHECK(extra.error() == microloop::errc::table_full);
    CHECK(counted::live == 4); // nothing was constructed

    for (int i = 0; i < 4; ++i) {
        counted* c = table.get<counted>(ids[i]);
        REQUIRE(c != nullptr);
        CHECK(c->value == i * 10);
    }

    CHECK_FALSE(table.release(ids[2]));
    CHECK(counted::live == 3);
    CHECK(table.get<counted>(ids[2]) == nullptr);
    CHECK(table.release(ids[2]) == microloop::errc::stale_handle); // double release
    CHECK(counted::live == 3);

    microloop::continuation_id again = table.emplace<counted>(7);
    REQUIRE(again);
    CHECK((again.id() & 0xffffu) == (ids[2].id() & 0xffffu)); // the freed slot, reused
    CHECK(again != ids[2]);
    CHECK(table.get<counted>(ids[2]) == nullptr); // the old id never reaches the new state
    REQUIRE(table.get<counted>(again) != nullptr);
    CHECK(table.get<counted>(again)->value == 7);
    CHECK(table.release(ids[2]) == microloop::errc::stale_handle);
    CHECK(counted::live == 4);
}

TEST_CASE("continuation table: the type is checked", "[continuation]") {
    microloop::continuation_table<2, 32> table;
    microloop::continuation_id id = table.emplace<counted>(5);
    REQUIRE(id);
    CHECK(table.get<other>(id) == nullptr);
    CHECK(table.get<request>(id) == nullptr);
    {
        microloop::taken<other> wrong = table.take<other>(id);
        CHECK_FALSE(wrong);
        CHECK(wrong.error() == microloop::errc::bad_argument);
    }
    CHECK(table.get<counted>(id) != nullptr); // a refused take leaves it in place
    const microloop::continuation_table<2, 32>& ctable = table;
    CHECK(ctable.get<const counted>(id) != nullptr);
    CHECK(table.release(id) == microloop::errc::ok);

    // Invalid and foreign ids.
    CHECK(table.get<counted>(microloop::continuation_id()) == nullptr);
    CHECK(table.get<counted>(microloop::continuation_id::from_id(0xffff0001u)) == nullptr);
    CHECK(table.release(microloop::continuation_id::from_id(0x00010005u)) == microloop::errc::stale_handle);
}

TEST_CASE("continuation table: destructors run exactly once", "[continuation]") {
    REQUIRE(counted::live == 0);
    {
        microloop::continuation_table<8> table;
        microloop::continuation_id a = table.emplace<counted>(1);
        microloop::continuation_id b = table.emplace<counted>(2);
        table.emplace<counted>(3);
        table.emplace<counted>(4);
        CHECK(counted::live == 4);
        CHECK_FALSE(table.release(a));
        CHECK(counted::live == 3);
        {
            microloop::taken<counted> t = table.take<counted>(b);
            REQUIRE(t);
            CHECK(t->value == 2);
            CHECK(counted::live == 3); // alive while taken
            CHECK(table.get<counted>(b) == nullptr); // but no longer reachable
            CHECK(table.release(b) == microloop::errc::stale_handle);
        }
        CHECK(counted::live == 2);
    }
    CHECK(counted::live == 0); // the table destroyed the last two
}

TEST_CASE("continuation table: a taken slot is reused only when the taken state is gone", "[continuation]") {
    microloop::continuation_table<1, sizeof(request)> table;
    request r = {42, 5, "hello"};
    microloop::continuation_id id = table.emplace<request>(r);
    REQUIRE(id);
    {
        microloop::taken<request> t = table.take<request>(id);
        REQUIRE(t);
        CHECK(t->sock == 42);
        CHECK(memcmp(t->buf, "hello", 5) == 0);
        CHECK(table.emplace<request>(r).error() == microloop::errc::table_full);

        microloop::taken<request> second = table.take<request>(id);
        CHECK_FALSE(second);
        CHECK(second.error() == microloop::errc::stale_handle);

        microloop::taken<request> moved(std::move(t));
        CHECK_FALSE(t);
        CHECK(moved->sock == 42);
    }
    microloop::continuation_id next = table.emplace<request>(r);
    CHECK(next);
    CHECK(next != id);

    // reset() finishes early.
    microloop::taken<request> t = table.take<request>(next);
    REQUIRE(t);
    t.reset();
    CHECK_FALSE(t);
    CHECK(table.size() == 0);
}

TEST_CASE("continuation table: a live taken<T> counts in size(), full() and stats(), and its slot stays unusable",
          "[continuation][robust]") {
    microloop::continuation_table<2, sizeof(request)> table;
    request r = {7, 0, ""};
    microloop::continuation_id a = table.emplace<request>(r);
    REQUIRE(a);
    {
        microloop::taken<request> t = table.take<request>(a);
        REQUIRE(t);
        microloop::continuation_id b = table.emplace<request>(r);
        REQUIRE(b);
        // One entry held, one taken out and alive: both slots are in use.
        CHECK(table.emplace<request>(r).error() == microloop::errc::table_full);
        CHECK(table.full());              // before the fix: false
        CHECK(table.size() == 2);         // before the fix: 1
        CHECK(table.stats().used == 2);   // before the fix: 1
        CHECK(table.stats().high_water == 2);
        int held = 0;
        table.for_each([&held](microloop::continuation_id) { ++held; });
        CHECK(held == 1); // for_each visits what is held, not what is taken out
    }
    CHECK_FALSE(table.full());
    CHECK(table.size() == 1);
    CHECK(table.stats().used == 1);
    CHECK(table.stats().high_water == 2);
    CHECK(table.emplace<request>(r));
}

TEST_CASE("continuation table: trivial and non-trivial types mix", "[continuation]") {
    microloop::continuation_table<3> table;
    microloop::continuation_id a = table.emplace<int>(3);
    microloop::continuation_id b = table.emplace<counted>(4);
    microloop::continuation_id c = table.emplace<other>();
    REQUIRE(a);
    REQUIRE(b);
    REQUIRE(c);
    CHECK(*table.get<int>(a) == 3);
    CHECK(table.get<long>(a) == nullptr);
    CHECK(table.get<unsigned>(a) == nullptr);
    CHECK(table.get<counted>(b)->value == 4);
    CHECK(table.get<other>(c)->value == 0); // value-initialized
    CHECK_FALSE(table.release(a));
    CHECK_FALSE(table.release(b));
    CHECK_FALSE(table.release(c));
    CHECK(counted::live == 0);
    CHECK(table.size() == 0);
}

// Bytes the libc heap has handed out and not taken back; -1 where unknown.
// The suite's operator new replacement (test_alloc.cpp) goes through malloc,
// so this sees it too, without a second replacement.
static long long heap_in_use() {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
    return static_cast<long long>(mallinfo2().uordblks);
#else
    return -1;
#endif
}

TEST_CASE("continuation table: no heap", "[continuation]") {
    static microloop::continuation_table<64, sizeof(request)> table;
    static microloop::continuation_id ids[64];
    long long before = heap_in_use();
    // No Catch2 assertions inside the window: they may allocate.
    int made = 0;
    for (int i = 0; i < 64; ++i) {
        ids[i] = table.emplace<request>();
        made += ids[i] ? 1 : 0;
    }
    long long during = heap_in_use();
    int taken_ok = 0;
    for (int i = 0; i < 64; i += 2) {
        microloop::taken<request> t = table.take<request>(ids[i]);
        taken_ok += t ? 1 : 0;
    }
    for (int i = 1; i < 64; i += 2) table.release(ids[i]);
    long long after = heap_in_use();
    CHECK(made == 64);
    CHECK(taken_ok == 32);
    CHECK(table.size() == 0);
    if (before < 0) WARN("heap use cannot be measured with this libc");
    CHECK(during == before);
    CHECK(after == before);
}

// ---- destruction order --------------------------------------------------------------

TEST_CASE("destroying a continuation table runs each destructor once, even one that releases another entry",
          "[robust][continuation]") {
    typedef microloop::continuation_table<4, 64> table_t;
    struct counts {
        int destroyed[4];
    };
    struct request {
        table_t* table;
        counts* c;
        int index;
        microloop::continuation_id child; // a sub-request this one owns
        request(table_t* t, counts* k, int i) : table(t), c(k), index(i), child() {}
        ~request() {
            ++c->destroyed[index];
            if (table) table->release(child); // stale after the table retired it: refused, not run twice
        }
    };
    counts c = {{0, 0, 0, 0}};
    {
        table_t table;
        // The sub-requests take the first slots, their parents the later
        // ones: the table's destructor meets each child before its parent.
        microloop::continuation_id kid0 = table.emplace<request>(nullptr, &c, 0);
        microloop::continuation_id kid1 = table.emplace<request>(nullptr, &c, 1);
        microloop::made<request> parent0 = table.make<request>(&table, &c, 2);
        microloop::made<request> parent1 = table.make<request>(&table, &c, 3);
        REQUIRE((kid0 && kid1 && parent0 && parent1));
        parent0->child = kid0;
        parent1->child = kid1;
    }
    for (int i = 0; i < 4; ++i) CHECK(c.destroyed[i] == 1); // before the fix: the children twice
}
