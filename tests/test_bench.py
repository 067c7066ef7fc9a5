"""The benchmark suite's moving parts run and report (no timing is asserted: benchmarks are scripts)."""

from textrnn import bench


def test_a_worker_of_each_kind_reports_its_figures(tmp_path):
    corpus = str(bench.corpus_file(tmp_path, 60_000))
    common = {"device": "cpu", "threads": 1, "corpus": corpus, "size": "d2l"}
    baseline = bench.worker({**common, "kind": "baseline", "seconds": 0.2})
    run = bench.worker(
        {**common, "kind": "textrnn", "cell": "gru", "backend": "fused", "seconds": 0.2, "paired_seconds": 0.1,
         "eval_chars": 2_000, "sample_length": 20, "streams": (1, 8)}
    )  # fmt: skip
    loading = bench.worker({**common, "kind": "corpus"})
    for key in ("train_tokens_per_sec", "eval_tokens_per_sec", "sample_chars_per_sec", "peak_memory_mb"):
        assert baseline[key] > 0 and run[key] > 0
    assert run["paired_baseline_train_tokens_per_sec"] > 0 and run["sample_chars_per_sec_8"] > 0
    assert loading["tokens"] == 60_000 and loading["token_bytes"] == 60_000  # one byte per character
    jobs = [{**common, "kind": "baseline"}, {**common, "kind": "textrnn", "cell": "gru", "backend": "fused"}]
    text = bench.table([{"job": jobs[0], "result": baseline}, {"job": jobs[1], "result": run}])
    assert "d2l-style loop" in text and "textrnn gru fused" in text and "sampling 8 streams" in text


def test_the_plans_cover_every_cell_and_backend():
    full = bench.plan(quick=False, device="cpu")
    configurations = {
        (job["cell"], job["backend"]) for job in full if job["kind"] == "textrnn" and job["size"] == "d2l"
    }
    assert configurations == {
        ("gru", "fused"), ("gru", "scratch"), ("lstm", "fused"), ("lstm", "scratch"),
        ("rnn_tanh", "fused"), ("rnn_tanh", "scratch"), ("peephole_lstm", "scratch"),
        ("mingru", "scratch"), ("minlstm", "scratch"),
    }  # fmt: skip
    blocks = {(job["cell"], job.get("block")) for job in full if job["kind"] == "textrnn"}
    assert {("mingru", "plain"), ("mingru", "residual"), ("minlstm", "plain"), ("minlstm", "residual")} <= blocks
    assert {job["megabytes"] for job in full if job["kind"] == "corpus"} == {1, 10, 100}
    assert len(bench.plan(quick=True, device="cpu")) < len(full)


def test_a_minimal_cell_is_benchmarked_bare_and_against_the_fused_gru(tmp_path):
    corpus = str(bench.corpus_file(tmp_path, 30_000))
    common = {"device": "cpu", "threads": 1, "corpus": corpus, "size": "d2l", "kind": "textrnn",
              "seconds": 0.2, "paired_seconds": 0.1, "eval_chars": 1_000, "sample_length": 10}  # fmt: skip
    jobs = [
        {**common, "cell": "gru", "backend": "fused"},
        {**common, "cell": "mingru", "backend": "scratch", "block": "plain"},
    ]
    results = [{"job": job, "result": bench.worker(job)} for job in jobs]
    gru, mingru = (item["result"] for item in results)
    expected = (mingru["train_tokens_per_sec"] / mingru["paired_baseline_train_tokens_per_sec"]) / (
        gru["train_tokens_per_sec"] / gru["paired_baseline_train_tokens_per_sec"]
    )
    text = bench.table(results)
    assert "textrnn mingru plain scratch, d2l" in text
    assert f"mingru plain, d2l: {expected:.2f}x the fused GRU's training tokens/s" in text
