"""The search benchmark's printed report: one row per index kind and workload, the CPU
split, and each figure against its target."""

from __future__ import annotations

from typing import Any

TARGETS = {"p99_ms": 20.0, "throughput_qps": 400.0, "recall": 0.95, "server_cpu_ms": 2.5}
TARGETS_1M = {"p99_ms": 30.0, "recall": 0.95, "rss_mb": 1e9 / 2**20}  # 1 GB, in MiB


def _kind_name(kind: str, index: dict[str, Any]) -> str:
    if kind == "exact":
        return kind
    name = f"{kind} {index['nlist']}/np{index['nprobe']}"
    return name + (f" r{index['refine_factor']}" if index["refine_factor"] else "")


def print_results(results: dict[str, Any]) -> None:
    print(
        f"\nsearch benchmark: {results['items']:,} items, {results['requests']:,} text queries "
        f"per workload over HTTP on 127.0.0.1, {results['clients']} clients\n"
        f"query texts: {results['query_model']} in {results['query_precision']} "
        f"on {results['query_runtime']} "
        f"({results['precision_reason']})\n"
        f"{results['cpu_count']} CPUs, load average {results['load_average_before']:.1f} before "
        f"and {results['load_average_after']:.1f} after (other processes share the CPUs)"
    )
    header = (
        f"{'index':<24}{'load':<9}{'clients':>7}{'p50 ms':>8}{'p99 ms':>8}{'q/s':>8}"
        f"{'failed':>7}{'srv CPU ms/q':>13}{'client CPU':>11}{'cache hits':>11}"
    )
    print(header)
    print("-" * len(header))
    for kind, r in results["kinds"].items():
        name = _kind_name(kind, r["index"])
        for workload, w in r["workloads"].items():
            hits = "-" if w["cache_hit_rate"] is None else f"{w['cache_hit_rate']:.2f}"
            print(
                f"{name:<24}{workload:<9}{results['clients']:>7}{w['p50_ms']:>8.2f}"
                f"{w['p99_ms']:>8.2f}{w['throughput_qps']:>8.1f}{w['failed']:>7}"
                f"{w['server_cpu_ms_per_query']:>13.3f}{w['client_cpu_ms_per_query']:>11.3f}"
                f"{hits:>11}"
            )
        s = r["sequential"]
        print(
            f"{name:<24}{'serial':<9}{1:>7}{s['p50_ms']:>8.2f}{s['p99_ms']:>8.2f}"
            f"{s['throughput_qps']:>8.1f}{s['failed']:>7}"
        )
    print("\nserver CPU ms per query by stage (encode / search / rerank incl. re-scoring / HTTP):")
    for kind, r in results["kinds"].items():
        for workload, w in r["workloads"].items():
            split = " / ".join(f"{v:.3f}" for v in w["cpu_split_ms_per_query"].values())
            print(f"  {_kind_name(kind, r['index']):<24}{workload:<9}{split}")
    print(
        "\nindex, recall@10 of the service's answers against exact search over the same "
        "vectors (served query vectors | base encoder's float32 ones), memory:"
    )
    for kind, r in results["kinds"].items():
        idx, mem = r["index"], r["memory"]
        print(
            f"  {_kind_name(kind, r['index']):<24}recall {r['recall_at_10_vs_exact']:.4f} | "
            f"{r['recall_at_10_vs_float32']:.4f} on {r['recall_queries']} queries; "
            f"{idx['bytes_per_item']:.0f} B/item, built in {idx['build_seconds']:.1f} s; "
            f"service RSS {mem['rss_mb']:.0f} MiB (peak {mem['peak_rss_mb']:.0f}, "
            f"heap {mem['anon_mb']:.0f}, file-backed {mem['file_mb']:.0f}); "
            f"in-process p50 {r['in_process_p50_ms']:.2f} ms, "
            f"e2e/in-process {r['e2e_over_in_process_p50']:.2f}"
        )
    print(f"command: {results['command']}")
    _print_targets(results)


def target_checks(
    items: int, kind: dict[str, Any], workload: dict[str, Any]
) -> list[tuple[str, bool, str]]:
    """Each speed target (README, "Speed and memory") for this catalog size, as (name, met, value):
    at 100k items latency, throughput and CPU per query; from 1M items a looser p99 and the
    serving process's memory (its resident set while serving, and its peak)."""
    t = TARGETS_1M if items >= 1_000_000 else TARGETS
    p99, qps = workload["p99_ms"], workload["throughput_qps"]
    recall = kind["recall_at_10_vs_exact"]
    checks = [
        ("p99", p99 <= t["p99_ms"], f"{p99:.1f} ms (<= {t['p99_ms']:.0f})"),
        (
            "recall@10",
            recall >= t["recall"],
            f"{recall:.3f} (with float32 query vectors {kind['recall_at_10_vs_float32']:.3f})",
        ),
    ]
    if "rss_mb" in t:
        memory = kind["memory"]
        for name, key in (("RSS", "rss_mb"), ("peak RSS", "peak_rss_mb")):
            limit = f"(<= {t['rss_mb']:.0f} MiB, 1 GB)"
            checks.append((name, memory[key] <= t["rss_mb"], f"{memory[key]:.0f} MiB {limit}"))
    else:
        cpu = workload["server_cpu_ms_per_query"]
        checks.append(("q/s", qps >= t["throughput_qps"], f"{qps:.0f}"))
        checks.append(("server CPU", cpu <= t["server_cpu_ms"], f"{cpu:.2f} ms/q"))
    return checks


def _print_targets(results: dict[str, Any]) -> None:
    for kind, r in results["kinds"].items():
        for workload, w in r["workloads"].items():
            checks = target_checks(results["items"], r, w)
            said = ", ".join(f"{n} {v} {'meets' if ok else 'MISSES'}" for n, ok, v in checks)
            print(f"targets [{kind}, {workload}]: {said}")
