"""A series' episode: raised after the debounce, ended only back near the lead-in baseline; the live
path's detector is the measured one."""

from __future__ import annotations

import math

import numpy as np

from aiops.detection import make_detector
from aiops.incidents.episode import MAD_PER_SIGMA, RecoveryRules, Returned, start
from aiops.incidents.pipeline import live_detector_settings, live_rules
from aiops.settings import AiopsSettings

RULES = RecoveryRules(confirm_steps=2, recovery_steps=3, band_sigmas=3.0, return_share=0.2, memory_steps=10)
NAN = math.nan


def test_the_band_is_the_lead_ins_median_and_robust_spread_or_a_share_of_the_deviation() -> None:
    episode = start("up", 30.0, [10.0, 11.0, 9.0, 10.0, None, 12.0], RULES)
    assert episode is not None and not episode.confirmed
    assert episode.baseline == 10.0 and episode.spread == MAD_PER_SIGMA * 1.0
    assert episode.tolerance(RULES) == max(3 * MAD_PER_SIGMA, 0.2 * 20.0)
    flat = start("up", 0.5, [0.0] * 10, RULES)  # an error ratio at zero has no jitter: a fifth of the way back
    assert flat is not None and flat.spread == 0.0 and flat.tolerance(RULES) == 0.1
    assert not flat.within(0.11, RULES) and flat.within(0.1, RULES)
    assert start("up", 1.0, [None, None], RULES) is None  # nothing to return to


def test_a_one_step_blip_is_dropped_and_a_lasting_deviation_confirmed_though_the_detector_is_quiet() -> None:
    blip = start("up", 30.0, [10.0] * 10, RULES)
    assert blip is not None and blip.confirm(10.5, alerting=False, rules=RULES) is False
    lasting = start("up", 30.0, [10.0] * 10, RULES)
    assert lasting is not None
    assert lasting.confirm(NAN, alerting=False, rules=RULES) is None  # no requests: no evidence
    assert lasting.confirm(29.0, alerting=False, rules=RULES) is True and lasting.confirmed
    wrong_side = start("up", 30.0, [10.0] * 10, RULES)
    assert wrong_side is not None and wrong_side.confirm(-20.0, alerting=False, rules=RULES) is False
    alerting = start("down", 5.0, [10.0] * 10, RULES)
    assert alerting is not None and alerting.confirm(9.9, alerting=True, rules=RULES) is True


def test_an_episode_ends_only_after_the_recovery_steps_back_within_the_band() -> None:
    episode = start("up", 30.0, [10.0, 10.2, 9.8, 10.1, 9.9], RULES)
    assert episode is not None and episode.confirm(31.0, alerting=False, rules=RULES)
    outcomes = [episode.follow(v, RULES) for v in (40.0, 10.0, 10.1, NAN, 25.0, 10.0, 9.9, 10.2)]
    assert outcomes == [False, False, False, False, False, False, False, True]
    assert episode.peak == 30.0  # the band widened with the largest deviation: 0.2 x 30 = 6


def test_the_return_of_a_learnt_fault_is_recognised_for_the_detectors_memory_only() -> None:
    back = Returned("up", 10.0, 2.0)
    assert back.explains("down", 11.0, RULES)
    assert not back.explains("up", 11.0, RULES)  # the same way again is a new anomaly
    assert not back.explains("down", 5.0, RULES)  # below the old baseline's band: a real dip
    back.age = RULES.memory_steps + 1
    assert not back.explains("down", 11.0, RULES)


def test_the_live_detector_is_the_measured_one_less_the_hold_after_an_alert() -> None:
    rng = np.random.default_rng(5)
    values = np.concatenate([rng.normal(10, 1, 700), rng.normal(18, 1, 300), rng.normal(10, 1, 300)])
    values[400] = 40.0
    measured, live = make_detector(), make_detector(live_detector_settings(None))
    assert live_rules(AiopsSettings()).detector == live_detector_settings(None)
    held = 0
    # at the benchmarks' 5-minute step, where the measured boundary per alert_interval_s is the
    # live path's per point
    for t, v in enumerate(values.tolist()):
        holding = measured.state_dict()["state"]["hold"] > 0
        a, b = measured.update(300.0 * t, v), live.update(300.0 * t, v)
        if holding:
            held += 1
        else:
            assert a == b
    assert held > 100  # the shift and the spike both alerted, and only there do they differ
    learnt = {k: v for k, v in measured.state_dict()["state"].items() if k not in ("hold", "alert_p")}
    assert learnt == {k: v for k, v in live.state_dict()["state"].items() if k not in ("hold", "alert_p")}
