"""The time-series stage: files read (``read``) -> series cleaned (``clean``) -> model inputs (``features``) ->
windows of every split (``windows``); forecast scores and baselines (``metrics``).
"""
