"""bench/replay.py at a tiny size: the workload it builds and the cases it times say what they
claim (no timing asserted: speed is what `make bench` measures)."""

from __future__ import annotations

from bench import replay


def test_the_replay_benchmark_times_what_the_command_does() -> None:
    results = {(r.case, r.output, r.jobs): r for r in replay.run(incidents=80, count=24, jobs=2, log=lambda *_: None)}
    markdown, json = results[("three changes", "markdown", 1)], results[("three changes", "json", 1)]
    worst = results[("every policy", "json", 1)]
    assert {r.incidents for r in results.values()} == {80} and {r.policies for r in results.values()} == {24}
    # JSON replays every incident; Markdown only those whose policy the three changes touch
    assert json.replayed == worst.replayed == 80 and 0 < markdown.replayed < 80
    assert markdown.kinds == json.kinds and markdown.changed == json.changed > 0
    assert worst.changed == 0  # a cooldown changes nothing a single incident does


def test_the_three_changes_touch_three_of_the_packs_twelve_policies() -> None:
    before, after = replay.policies(24), replay.policies(24, replay.three_changes)
    changed = sorted(a.name for a, b in zip(before, after, strict=True) if a.spec != b.spec)
    assert changed == sorted(["high-error-rate", "redis-down", "high-cpu-usage",
                              "high-error-rate-copy1", "redis-down-copy1", "high-cpu-usage-copy1"])  # fmt: skip


def test_make_bench_reports_the_replay_rows_with_their_target() -> None:
    from bench.run import X, render, replay_rows

    results = replay.run(incidents=40, count=12, jobs=2, log=lambda *_: None)
    table, rows = render({}, 0.001, "python bench/run.py", 1.0, replays=results)
    replayed = [r for r in rows if r.figure.startswith(f"replay: 40 incidents {X} 12 policies")]
    assert len(replayed) == 4 and all(r.unit == "s" and r.ours > 0 for r in replayed)
    assert f"| replay: 40 incidents {X} 12 policies, every policy, `--output json`, 1 process (40 replayed) |" in table
    # the target (under 10 s for 10,000) applies on every CPU; one process is the baseline
    typical, worst, alone = (replay.Result(case, "json", jobs, 10_000, 100, seconds, 10_000, 0, {})
                             for case, jobs, seconds in (("three changes", 2, 8.5), ("every policy", 2, 13.5),
                                                         ("three changes", 1, 20.4)))  # fmt: skip
    assert [(r.target, r.met) for r in replay_rows([typical, worst, alone])] == [
        ("< 10 s", True), ("< 10 s", False), ("", None)]  # fmt: skip
