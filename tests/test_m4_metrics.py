"""The M4 scores and benchmarks on series small enough to check by hand."""

import math

import numpy as np
import pytest

from textrnn.timeseries import m4


def alternating(length):
    return np.array([1.0, 2.0] * (length // 2))


def test_the_autocorrelation_of_an_alternating_series():
    # mean 1.5, deviations +-0.5: sum of squares 12 * 0.25 = 3; lag 1: 11 products of -0.25; lag 2: 10 of +0.25
    assert m4.autocorrelation(alternating(12), 1) == pytest.approx(-11 * 0.25 / 3)
    assert m4.autocorrelation(alternating(12), 2) == pytest.approx(10 * 0.25 / 3)
    assert m4.autocorrelation(np.ones(5), 1) == 0.0


def test_the_seasonality_test_at_the_90_percent_limit():
    # n = 12: |acf_2| = 0.833 > 1.645 sqrt((1 + 2 * 0.9167^2) / 12) = 0.777: seasonal
    assert m4.is_seasonal(alternating(12), 2)
    # n = 8: |acf_2| = 0.75 < 1.645 sqrt((1 + 2 * 0.875^2) / 8) = 0.925: not seasonal
    assert not m4.is_seasonal(alternating(8), 2)
    # shorter than three seasons: not tested
    assert not m4.is_seasonal(alternating(4), 2)
    assert not m4.is_seasonal(alternating(12), 1)


def test_the_centered_moving_average_of_an_even_season():
    # m = 2: weights 1/4, 1/2, 1/4; m = 3: 1/3 each
    trend = m4.centered_moving_average(np.array([1.0, 2.0, 3.0, 5.0]), 2)
    assert np.isnan(trend[0]) and np.isnan(trend[3])
    assert trend[1:3] == pytest.approx([(1 + 4 + 3) / 4, (2 + 6 + 5) / 4])
    assert m4.centered_moving_average(np.array([1.0, 2.0, 6.0, 1.0]), 3)[1:3] == pytest.approx([3.0, 3.0])


def test_seasonal_indices_and_naive2_of_a_seasonal_series():
    # trend 1.5 everywhere it is defined; ratios 2/3 at even positions, 4/3 at odd ones (mean 1 already)
    assert m4.seasonal_indices(alternating(12), 2) == pytest.approx([2 / 3, 4 / 3])
    # the adjusted series is 1.5 throughout: Naive2 continues the pattern exactly
    assert m4.naive2(alternating(12), 4, 2) == pytest.approx([1.0, 2.0, 1.0, 2.0])
    # n = 8 is not seasonal: Naive2 is the naive forecast
    assert m4.naive2(alternating(8), 3, 2) == pytest.approx([2.0, 2.0, 2.0])


def test_seasonal_indices_start_at_the_first_value():
    series = np.array([1.0, 2.0] * 6)[1:]  # 11 values starting with a 2
    indices = m4.seasonal_indices(series, 2)
    assert indices[0] > 1 > indices[1]
    assert indices.mean() == pytest.approx(1.0)


def test_seasonal_naive_repeats_the_last_season():
    values = np.array([9.0, 1.0, 2.0, 3.0])
    assert m4.seasonal_naive(values, 5, 3).tolist() == [1.0, 2.0, 3.0, 1.0, 2.0]


def test_smape_mase_and_owa_by_hand():
    actual = np.array([[10.0, 20.0], [1.0, 1.0]])
    forecast = np.array([[12.0, 20.0], [1.0, 3.0]])
    # series 1: 200/2 * (2/22 + 0) = 9.0909; series 2: 200/2 * (0 + 2/4) = 50
    figures = m4.scores(actual, forecast, np.array([2.0, 4.0]))
    assert figures["smape"] == pytest.approx((200 / 2 * 2 / 22 + 50) / 2)
    # MAE 1 / scale 2 and MAE 1 / scale 4
    assert figures["mase"] == pytest.approx((0.5 + 0.25) / 2)
    assert m4.owa({"smape": 10.0, "mase": 1.0}, {"smape": 20.0, "mase": 4.0}) == pytest.approx((0.5 + 0.25) / 2)
    assert m4.smape_steps(np.zeros((1, 1)), np.zeros((1, 1)))[0, 0] == 0.0


def test_mase_scales_are_seasonal_differences():
    # |3-1|, |4-2|, |8-3| over m = 2: (2 + 2 + 5) / 3
    assert m4.mase_scales([np.array([1.0, 2.0, 3.0, 4.0, 8.0])], 2)[0] == pytest.approx(3.0)
    assert m4.mase_scales([np.array([1.0, 3.0])], 2)[0] == pytest.approx(2.0)  # too short: lag 1


def test_the_report_scores_naive2_at_owa_one():
    histories = [alternating(12) * 10 + np.arange(12) * 0.1, np.arange(1.0, 13.0)]  # no zero MASE scale
    actual = np.array([[10.0, 20.0, 10.0], [13.0, 14.0, 15.0]])
    forecast = np.array([[11.0, 19.0, 10.0], [13.0, 14.0, 15.0]])
    report = m4.m4_report(actual, forecast, histories, 2)
    assert report["baselines"]["naive2"]["owa"] == pytest.approx(1.0)
    assert set(report) == {"smape", "mase", "owa", "baselines", "per_step_smape"}
    assert len(report["per_step_smape"]) == 3
    assert report["per_step_smape"][2] == 0.0
    naive = report["baselines"]["naive2"]
    assert report["owa"] == pytest.approx(0.5 * (report["smape"] / naive["smape"] + report["mase"] / naive["mase"]))
    assert all(math.isfinite(report[key]) for key in ("smape", "mase", "owa"))
