# tests/bench/stats.awk - what the bench scripts' tables share: prepended to
# their awk programs (awk "$STATS_AWK"'...'), as any awk can take it.
# kv(): the record's key=value fields into f[]. add(key, v): one more sample
# of key. med(key): the median of its samples (-1 for none). ratio(a, b):
# a / b as "1.23x", or "-" if either is missing.
function kv(   i, p) { delete f; for (i = 1; i <= NF; i++) { p = index($i, "="); if (p) f[substr($i, 1, p - 1)] = substr($i, p + 1) } }
function add(key, v) { cnt[key]++; val[key, cnt[key]] = v + 0 }
function med(key,   n, i, j, t, a) {
    n = cnt[key]; if (!n) return -1
    for (i = 1; i <= n; i++) a[i] = val[key, i]
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function ratio(a, b) { return (a > 0 && b > 0) ? sprintf("%.2fx", a / b) : "-" }
