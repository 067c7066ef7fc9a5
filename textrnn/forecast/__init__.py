"""Forecasting: the forecaster, its training task, the series of a run, scores and calibration, forecasts
past the end, backtests.
"""
