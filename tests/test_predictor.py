"""The live autoscaler runs the same policy objects as the simulator, fed the engine's counters."""

from __future__ import annotations

import time

import warmslot
from conftest import Client, concurrently
from warmslot.policies import KpaPolicy, PredictivePolicy, StaticPolicy
from warmslot.predictor import WarmupClock, observation


def test_observation_maps_the_engines_counters():
    # (waiting, inflight, warm, busy, arrivals, ran, run_us, cpu_us)
    obs = observation(12.5, (5, 9, 4, 4, 100, 90, 4_500_000, 300_000), starting=2, warmup_s=0.3)
    assert (obs.t, obs.arrivals, obs.ran, obs.run_us, obs.cpu_us) == (12.5, 100, 90, 4_500_000, 300_000)
    assert obs.waiting == 5, "admitted and not yet running (ring and lanes)"
    assert (obs.busy, obs.warm, obs.starting, obs.warmup_s, obs.cold_starts) == (4, 4, 2, 0.3, 0)
    unmeasured = observation(1.0, (0, 0, 1, 0, 10, 10, 500_000, 0), 0, 0.3)
    assert unmeasured.cpu_us == unmeasured.run_us, "no CPU time measured: equal tells the policy it is unknown"
    # The slot pool's own measurements win once it has them.
    pool = {"warmup_s": 0.12, "cold_starts": 3}
    obs = observation(0.0, (7, 2, 1, 1, 0, 0, 0), 0, 0.5, pool)
    assert (obs.waiting, obs.warmup_s, obs.cold_starts) == (7, 0.12, 3)


def test_warmup_clock_measures_from_asking_to_warm():
    clock = WarmupClock()
    clock.started(10.0, 2)
    assert clock.observe(10.1, 0) == 0.0
    assert abs(clock.observe(10.4, 1) - 0.4) < 1e-9
    clock.started(11.0, 1)
    seconds = clock.observe(11.2, 3)  # the second slot of the first batch (1.2 s) and the new one (0.2 s)
    assert 0.2 < seconds < 1.2


def test_each_pipeline_runs_its_declared_policy_live(serve):
    app = warmslot.App()

    @app.pipeline("fixed", scaling="static", min_slots=1, max_slots=4, timeout=None)
    def fixed(event):
        time.sleep(0.05)
        return {}

    @app.pipeline("knative", scaling="reactive", scaling_options={"stable_window": 30}, max_slots=4)
    def knative(event):
        return {}

    @app.pipeline("default", max_slots=4)
    def default(event):
        return {}

    server, _ = serve(app)
    kinds = [type(p) for p in server.autoscaler.policies]
    assert kinds == [StaticPolicy, KpaPolicy, PredictivePolicy]
    assert server.autoscaler.policies[1].panic_window == 3.0

    def client(i):
        with Client(server.host, server.port) as c:
            for _ in range(10):
                assert c.post("fixed", {})[0] == 200

    concurrently(6, client)  # 6 clients on 1 slot: a queue, but static never grows
    preds = server.predictions()
    assert preds["fixed"]["policy"] == "static" and preds["fixed"]["target_slots"] == 1
    assert server.runtimes[0].started == 1
    assert preds["knative"]["policy"] == "reactive" and preds["knative"]["phase"] in KpaPolicy.PHASES
    assert preds["default"]["policy"] == "predictive" and preds["default"]["phase"] in PredictivePolicy.PHASES
    for p in preds.values():
        assert {"policy", "phase", "forecast_rps", "target_slots"} <= set(p)


def test_scale_to_grows_and_never_shrinks_here(serve):
    app = warmslot.App()

    @app.pipeline("p", scaling="static", min_slots=1, max_slots=3)
    def p(event):
        return {}

    server, _ = serve(app)
    rt = server.runtimes[0]
    assert rt.scale_to(3) == 2
    assert rt.started == 3  # warm or warming
    assert rt.scale_to(1) == 0 and rt.started == 3
    assert rt.scale_to(5) == 0, "never past max_slots"


def test_demo_prints_pool_size_and_target_per_pipeline(serve):
    from warmslot.demo import pool_line

    app = warmslot.App()

    @app.pipeline("a", scaling="static", min_slots=2, max_slots=2)
    def a(event):
        return {}

    @app.pipeline("b", scaling="reactive", max_slots=4)
    def b(event):
        return {}

    server, _ = serve(app)
    line = pool_line(server)
    assert line == "pool: a 2 warm / target 2 (static: static), b 1 warm / target 1 (reactive: stable)", line
