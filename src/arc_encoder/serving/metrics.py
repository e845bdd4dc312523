"""GET /metrics: the service's counters in Prometheus' text exposition format (version 0.0.4).

The cache of compressed documents (hits, misses, evictions, entries, bytes and its bound) and the
worker (jobs waiting, abandoned, model calls for batches). Like /health, it needs no key.
"""

from __future__ import annotations

from .cache import DocumentCache

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def metric(name: str, kind: str, help_text: str, value: float) -> str:
    return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n{name} {value}\n"


def metrics_text(cache: DocumentCache, worker) -> str:
    stats = cache.stats()
    rows = [
        ("arc_cache_hits_total", "counter", "Documents found in the cache of compressed documents.", stats.hits),
        ("arc_cache_misses_total", "counter", "Documents the cache lacked (compressed).", stats.misses),
        ("arc_cache_evictions_total", "counter", "Documents dropped to stay within the bound.", stats.evictions),
        ("arc_cache_entries", "gauge", "Documents in the cache.", stats.entries),
        ("arc_cache_bytes", "gauge", "Bytes of vectors the cache holds.", stats.bytes),
        ("arc_cache_capacity_bytes", "gauge", "The cache's bound in bytes (--cache-mb).", stats.capacity_bytes),
        ("arc_pending_jobs", "gauge", "Requests waiting for the model.", worker.pending),
        ("arc_abandoned_jobs_total", "counter", "Requests whose client left before the answer.", worker.abandoned),
        ("arc_batches_total", "counter", "Model calls made for batchable requests.", worker.batches),
        ("arc_batched_jobs_total", "counter", "Requests answered by those calls.", worker.batched_jobs),
    ]
    return "".join(metric(*row) for row in rows)
