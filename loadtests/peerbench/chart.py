"""The results as a chart (PNG): closed-loop throughput, CPU per request, latency, open loop."""

from __future__ import annotations


def plot(entries: list, path: str, slo_us: float, note: str = "") -> None:
    """Draws the chart to `path`; `note` (the run's date, commit and command) goes in its corner."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [e for e in entries if e.get("rps_64")]
    names = [e["name"] for e in ok]
    colors = ["#d62728" if n.startswith("warmslot") else "#1f77b4" for n in names]
    fig, axes = plt.subplots(1, 4, figsize=(22, 5.5))

    ax = axes[0]
    vals = [e["rps_64"] for e in ok]
    bars = ax.bar(names, vals, color=colors)
    ax.bar_label(bars, labels=[f"{v:,.0f}" for v in vals], fontsize=7)
    ax.set_title("closed loop, 64 connections (wrk -t1)")
    ax.set_ylabel("requests / s")
    ax.tick_params(axis="x", rotation=40)

    ax = axes[1]
    vals = [e.get("cpu_us_per_request") or 0.1 for e in ok]
    bars = ax.bar(names, vals, color=colors)
    ax.bar_label(bars, labels=[f"{v:.0f}" for v in vals], fontsize=7)
    ax.set_title("server CPU time per request, 64 connections")
    ax.set_yscale("log")
    ax.set_ylabel("µs of CPU / request (log)")
    ax.tick_params(axis="x", rotation=40)

    ax = axes[2]
    xs = range(len(ok))
    ax.bar([x - 0.2 for x in xs], [e.get("p50_c1_us") or 0 for e in ok], width=0.4, label="p50")
    ax.bar([x + 0.2 for x in xs], [e.get("p99_c1_us") or 0 for e in ok], width=0.4, label="p99")
    ax.set_xticks(list(xs), names, rotation=40)
    ax.set_yscale("log")
    ax.set_ylabel("latency, µs (log)")
    ax.set_title("1 connection (wrk -t1 -c1)")
    ax.legend()

    ax = axes[3]
    for e in ok:
        pts = [(p["rate"], p["p99_us"]) for p in (e.get("open_loop") or {}).get("points", []) if p.get("p99_us")]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=e["name"])
    ax.axhline(slo_us, color="grey", linestyle="--", linewidth=1, label=f"SLO {slo_us / 1000:g} ms")
    ax.set_yscale("log")
    ax.set_xlabel("offered rate, req/s (fractions of each system's own max)")
    ax.set_ylabel("p99, µs (log), corrected for coordinated omission")
    ax.set_title("open loop (oha -q RATE --latency-correction)")
    ax.legend(fontsize=7)
    failed = [e["name"] for e in entries if not e.get("rps_64")]
    if failed:
        fig.text(0.01, 0.01, "failed or invalid: " + ", ".join(failed), fontsize=8, color="#d62728")
    if note:
        fig.text(0.99, 0.01, note, fontsize=7, color="#555555", ha="right")
    fig.tight_layout(rect=(0, 0.03, 1, 1) if note else (0, 0, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
