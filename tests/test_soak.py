"""Load: hundreds of steps on 4 devices leak neither memory nor file descriptors.

The full figure (1,000 steps) is in tests/README.md; this is the shortened run. Bounds,
after a 50-step warm-up: no process opens a single extra file descriptor, and no process's
resident memory grows by more than 512 KiB over 250 steps (2 KiB a step). Leaking one
batch copy (16 KiB), one gradient vector (19 KiB) or one parameter copy per step would
break the bound 8-10 times over; the run measures growth of 0-16 KiB.
"""
import pytest

from mgpu_lab.measure import soak

pytestmark = pytest.mark.integration  # worker processes (tests/README.md: tiers)

WARMUP, STEPS = 50, 300
MAX_RSS_GROWTH = 512 * 2**10


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_300_steps_on_4_devices_do_not_grow_memory_or_file_descriptors():
    result = soak.run(steps=STEPS, n_devices=4, sample_every=25, keep_history=False, progress=False)
    print("\n" + result.table(after_step=WARMUP))
    assert result.steps[0] == 1 and result.steps[-1] == STEPS
    assert list(result.rss) == ["parent", "device 0", "device 1", "device 2", "device 3"]
    growth = result.growth(after_step=WARMUP)
    for label, (rss, fds) in growth.items():
        assert fds == 0, f"{label} opened {fds} file descriptors it did not close"
        assert rss < MAX_RSS_GROWTH, f"{label}'s memory grew by {rss / 2**10:.0f} KiB"
    assert all(r > 10 * 2**20 for series in result.rss.values() for r in series)  # real RSS figures


def test_growth_needs_a_sample_after_the_warm_up():
    r = soak.SoakResult("m", 1, 8, steps=[1, 50], rss={"parent": [10, 30]}, fds={"parent": [5, 6]})
    assert r.growth(after_step=0) == {"parent": (20, 1)}
    assert r.growth(after_step=50) == {"parent": (0, 0)}
    with pytest.raises(ValueError, match="no sample at or after step 51; the last is at step 50"):
        r.growth(after_step=51)
