#!/bin/sh
# tests/check_guarantees.sh TEST_BINARY [RUNNER...] - every test named in the
# README's "Guarantees" table exists: a promise must name the test that
# proves it, and a renamed test must not leave a promise unproved.
set -u
bin=$1
shift
# Catch2 v2 exits with the number of tests listed: the status says nothing.
names=$("$@" "$bin" --list-test-names-only 2>/dev/null)
[ -n "$names" ] || { echo "cannot list the tests of $bin" >&2; exit 1; }
missing=0
checked=0
# The table's rows, second column: names in backquotes that contain a space
# (make commands, which have one too, are left out).
awk '/^## Guarantees/{g=1; next} g && /^## /{exit} g && /^\|/' README.md |
    awk -F'|' '{print $3}' | grep -o '`[^`]* [^`]*`' | tr -d '`' | grep -v '^make ' > "${TMPDIR:-/tmp}/microloop-guarantees.$$"
while IFS= read -r name; do
    checked=$((checked + 1))
    if ! printf '%s\n' "$names" | grep -qxF "$name"; then
        echo "README Guarantees names a test that does not exist: $name" >&2
        missing=$((missing + 1))
    fi
done < "${TMPDIR:-/tmp}/microloop-guarantees.$$"
rm -f "${TMPDIR:-/tmp}/microloop-guarantees.$$"
[ "$checked" -gt 0 ] || { echo "no test names found in the README's Guarantees table" >&2; exit 1; }
echo "$checked test names in the README's Guarantees table, $missing missing"
[ "$missing" -eq 0 ]
