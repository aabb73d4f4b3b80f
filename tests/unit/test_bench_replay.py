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
