"""`warmslot simulate`: the pool model, the traces, the scores and the command."""

from __future__ import annotations

import functools
import json
import re
import sys

import pytest
from warmslot.cli import main
from warmslot.policies import make_policy
from warmslot.simulate import BUILTIN, PoolModel, Trace, get_trace, load_csv, run, simulate

SCORES = {"events", "cold_starts", "cold_start_rate", "idle_slot_seconds", "p50_wait_ms", "p99_wait_ms"}


@functools.lru_cache(maxsize=None)
def _kpa_and_predictive(seed: int) -> tuple:
    """The overall scores of KPA and of the predictive policy on the five built-in traces."""
    report, _ = simulate(list(BUILTIN), ["reactive", "predictive"], seed=seed)
    return report["overall"]["reactive"], report["overall"]["predictive"]


def _percent(part: float, whole: float) -> int:
    """``part / whole`` in whole percent, as the README writes its ratios."""
    return round(100 * part / whole)


# README.md ("warmslot simulate"): over seeds 0-7 the predictive policy's cold-start rate is 16-22 %
# of KPA's and its idle slot-seconds 43-51 % of KPA's; the seeds above 20 % are 1, 4 and 7.
SEEDS_ABOVE_20_PERCENT = (1, 4, 7)


@pytest.mark.parametrize("seed", range(8))
def test_predictive_against_knative_kpa_on_the_builtin_traces_as_the_readme_reports(seed):
    # The bar: overall cold-start rate at most 20 % of KPA's, with no more idle
    # slot-seconds. It holds on every seed but the three the README names as above it.
    kpa, ours = _kpa_and_predictive(seed)
    assert kpa["cold_starts"] > 100, "the traces must make KPA pay for cold starts, or the bar says nothing"
    assert ours["events"] == kpa["events"], "both policies replay the same arrivals"
    # Same events, so the ratio of the cold-start rates is the ratio of the counts (exact, unrounded).
    cold = ours["cold_starts"] / kpa["cold_starts"]
    assert (cold > 0.2) == (seed in SEEDS_ABOVE_20_PERCENT), (seed, cold)
    assert 16 <= _percent(ours["cold_starts"], kpa["cold_starts"]) <= 22, (seed, cold)
    assert 43 <= _percent(ours["idle_slot_seconds"], kpa["idle_slot_seconds"]) <= 51, (seed, ours, kpa)
    assert ours["idle_slot_seconds"] <= kpa["idle_slot_seconds"], (ours, kpa)
    assert ours["p99_wait_ms"] <= kpa["p99_wait_ms"], (ours, kpa)


def test_the_readme_table_is_seed_0():
    # README.md's table (`warmslot simulate --policy reactive --policy predictive`, seed 0) and the
    # sentence under it: 16 % of KPA's cold-start rate with 49 % of its idle slot-seconds.
    kpa, ours = _kpa_and_predictive(0)
    rows = {
        name: (s["cold_starts"], s["events"], f"{100 * s['cold_start_rate']:.2f}", round(s["idle_slot_seconds"]))
        for name, s in (("reactive", kpa), ("predictive", ours))
    }
    assert rows == {"reactive": (518, 20748, "2.50", 22251), "predictive": (85, 20748, "0.41", 10856)}
    assert (round(kpa["p99_wait_ms"]), round(ours["p99_wait_ms"])) == (1846, 226)
    assert _percent(ours["cold_starts"], kpa["cold_starts"]) == 16
    assert _percent(ours["idle_slot_seconds"], kpa["idle_slot_seconds"]) == 49


def test_simulate_json_schema_and_determinism(capsys):
    argv = [
        "simulate",
        "--trace",
        "bursts",
        "--trace",
        "poisson",
        "--policy",
        "reactive",
        "--policy",
        "predictive",
        "--seed",
        "7",
        "--json",
    ]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"model", "seed", "traces", "overall"}
    assert report["seed"] == 7 and report["model"]["warmup_s"] == 1.0
    assert list(report["traces"]) == ["bursts", "poisson"]
    for per in list(report["traces"].values()) + [report["overall"]]:
        assert list(per) == ["reactive", "predictive"]
        for scores in per.values():
            assert set(scores) == SCORES
            assert 0.0 <= scores["cold_start_rate"] <= 1.0 and scores["idle_slot_seconds"] >= 0
            assert scores["p50_wait_ms"] <= scores["p99_wait_ms"]
    overall = report["overall"]["reactive"]
    assert overall["events"] == sum(report["traces"][t]["reactive"]["events"] for t in ("bursts", "poisson"))
    assert overall["cold_starts"] == sum(report["traces"][t]["reactive"]["cold_starts"] for t in ("bursts", "poisson"))
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == report, "same seed, same figures"


def test_simulate_table_and_model_flags(capsys):
    assert (
        main(
            [
                "simulate",
                "--trace",
                "onoff",
                "--policy",
                "static",
                "--warmup",
                "0.3",
                "--service",
                "0.05",
                "--min-slots",
                "2",
                "--max-slots",
                "2",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == [
        "trace",
        "policy",
        "events",
        "cold",
        "%",
        "idle",
        "slot-s",
        "p50",
        "ms",
        "p99",
        "ms",
    ]
    assert "onoff" in out and "overall" in out and "static" in out


def test_static_pool_never_cold_starts_and_idles_what_it_does_not_use():
    trace = Trace("even", [i * 0.5 for i in range(120)], 60.0)  # 2 req/s, 0.2 s each: 0.4 slots busy
    res = run(trace, make_policy("static", 2, 8), PoolModel(min_slots=2, max_slots=8, service_cv=0.0), seed=0)
    assert res.events == 120 and res.cold_starts == 0
    assert res.idle_slot_seconds == pytest.approx(2 * 60.0 - 120 * 0.2, abs=0.5)
    assert max(res.waits) == 0.0


def test_a_cold_start_is_an_event_that_waited_for_a_warm_up():
    # 1 slot, 20 events at once, 2 s warm-up: the policy asks for 8 slots. Events still queued
    # when the new slots are warm ran on slots that finished warming after they arrived.
    trace = Trace("clump", [1.0] * 20, 20.0)

    class Eight:
        name = "eight"

        def decide(self, obs):
            return 8 if obs.t >= 1.0 else 1

        def snapshot(self):
            return {"policy": "eight", "phase": "-", "forecast_rps": 0.0, "target_slots": 8}

    res = run(trace, Eight(), PoolModel(warmup_s=2.0, service_s=0.5, service_cv=0.0, max_slots=8), seed=0)
    # The warm slot runs 1 event per 0.5 s: by the time 7 more are warm (~3 s), 4-5 ran warm.
    assert 14 <= res.cold_starts <= 16, res.cold_starts
    assert res.events == 20


def test_csv_traces_timestamps_and_azure_per_minute_counts(tmp_path, capsys):
    ts = tmp_path / "ts.csv"
    ts.write_text("timestamp\n100.0\n100.5\n101.0\n103.0\n")
    trace = load_csv(str(ts), __import__("random").Random(0))
    assert trace.arrivals == [0.0, 0.5, 1.0, 3.0] and trace.name == "ts"

    azure = tmp_path / "azure.csv"
    header = ["HashOwner", "HashApp", "HashFunction", "Trigger"] + [str(m) for m in range(1, 6)]
    rows = [["o", "a", "f1", "http", "3", "0", "1", "0", "2"], ["o", "a", "f2", "timer", "1", "0", "0", "0", "0"]]
    azure.write_text("\n".join(",".join(r) for r in [header] + rows) + "\n")
    trace = load_csv(str(azure), __import__("random").Random(0))
    assert trace.duration == 300.0
    per_minute = [sum(1 for a in trace.arrivals if m * 60 <= a < (m + 1) * 60) for m in range(5)]
    assert per_minute == [4, 0, 1, 0, 2]

    assert main(["simulate", "--trace", str(azure), "--policy", "predictive", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["traces"]["azure"]["predictive"]["events"] == 7


def test_unknown_trace_and_bad_model_are_usage_errors(capsys):
    assert main(["simulate", "--trace", "nope"]) == 2
    assert "unknown trace 'nope'" in capsys.readouterr().err
    assert main(["simulate", "--min-slots", "3", "--max-slots", "2"]) == 2
    assert "--min-slots" in capsys.readouterr().err


def test_builtin_traces_are_deterministic_per_seed():
    for name in BUILTIN:
        a, b, c = get_trace(name, 1), get_trace(name, 1), get_trace(name, 2)
        assert a.arrivals == b.arrivals and a.arrivals != c.arrivals
        assert a.arrivals == sorted(a.arrivals) and 0 <= a.arrivals[0] and a.arrivals[-1] < a.duration


def test_plot_writes_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "sim.png"
    assert main(["simulate", "--trace", "onoff", "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"chart written to {out}" in capsys.readouterr().out


def test_plot_without_matplotlib_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    assert main(["simulate", "--trace", "onoff", "--plot", str(tmp_path / "x.png")]) == 2
    assert "pip install 'warmslot[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_recurring_bursts_on_fast_warming_slots_the_live_scenario():
    # The live check (tests/test_scaling_live.py) in the simulator: 12 events within 0.5 s every
    # 4 s for 40 s, 300 ms warm-ups, 100 ms runs, 1..8 slots. KPA decides every 2 s, so where
    # the first burst falls on its grid matters: 8 phases x 2 seeds. A first, unlearned burst
    # is served by the slot there is (no cold starts), then the learned size is warm before
    # each burst: no more cold starts than KPA and fewer idle slot-seconds, in total.
    import random

    model = PoolModel(warmup_s=0.3, service_s=0.1, min_slots=1, max_slots=8)
    totals = {"reactive": [0, 0.0], "predictive": [0, 0.0]}
    for k in range(8):
        for seed in range(2):
            rng = random.Random(seed * 100 + k)
            start = 0.5 + 2.0 * k / 8
            arrivals = sorted(
                start + b * 4.0 + rng.uniform(-0.05, 0.05) * (b > 0) + 0.5 * rng.random()
                for b in range(10)
                for _ in range(12)
            )
            trace = Trace("cron", arrivals, start + 42.0)
            for p in totals:
                r = run(trace, make_policy(p, 1, 8, {"concurrency": 1}), model, seed)
                totals[p][0] += r.cold_starts
                totals[p][1] += r.idle_slot_seconds
    (kpa_cold, kpa_idle), (ours_cold, ours_idle) = totals["reactive"], totals["predictive"]
    assert ours_cold <= kpa_cold and ours_idle < 0.9 * kpa_idle, totals


def _table_and_note(capsys, *args: str) -> tuple:
    """(rows of the table by (trace, policy), the note under it or "")."""
    assert main(["simulate", *args]) == 0
    out = capsys.readouterr().out
    table, _, note = out.partition("\n\n")
    rows = {tuple(line.split()[:2]): line.split() for line in table.splitlines()[1:]}
    return rows, " ".join(note.split())


def test_static_waits_that_are_queueing_get_a_note_under_the_table(capsys):
    # The default --min-slots 1: one slot runs 5 events/s, the poisson trace brings 10/s, so static's
    # waits grow to minutes. The note says why, and which --min-slots keeps up.
    rows, note = _table_and_note(capsys, "--trace", "poisson")
    assert float(rows[("poisson", "static")][-1]) > 60_000, "static's p99 wait is minutes at --min-slots 1"
    assert note.startswith(
        "note: the static policy keeps --min-slots 1 slot warm and never grows; that slot runs about 5 events/s "
        "(--service 0.2 s, --concurrency 1), and the busiest second of these traces brings "
    ), note
    assert "so events queue: static's waits on poisson are queueing, not cold starts." in note
    suggested = re.search(r"Try --min-slots (\d+), about what that second keeps busy\.$", note)
    assert suggested is not None, note
    # At the suggested size static keeps up: its waits are small, and there is no note.
    rows, note = _table_and_note(capsys, "--trace", "poisson", "--min-slots", suggested.group(1))
    assert float(rows[("poisson", "static")][-1]) < 1000, rows
    assert note == ""
    # Without static in the comparison, or as JSON, nothing is added.
    assert _table_and_note(capsys, "--trace", "poisson", "--policy", "reactive")[1] == ""
    assert main(["simulate", "--trace", "poisson", "--policy", "static", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["overall"]["static"]["p99_wait_ms"] > 60_000


def test_min_slots_help_says_static_keeps_exactly_that_many(capsys):
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "the static policy keeps exactly this many, so with 1 it queues" in help_text
