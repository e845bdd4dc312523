"""The batching worker: which jobs share a model call, order, isolation of failures, seeded sampling."""

import threading
import time

import pytest

from arc_encoder.serving.worker import BatchingWorker, CallJob, CompressJob, DecodeParams, GenerateJob, Resources
from arc_encoder.storage.indexing import open_store


@pytest.fixture
def worker_for(saved_model, tmp_path):
    _, model = saved_model
    started = []

    def make(**options):
        calls = []  # (kind, number of prompts or texts, params)

        def open_resources():
            store, settings = open_store(tmp_path / "store", model)
            res = Resources(model, store, settings)
            hf_generate, hf_compress = res.generate, res.documents.compress

            def generate(prompts, decoder, params, on_token=None):
                calls.append(("generate", len(prompts), params))
                return hf_generate(prompts, decoder, params, on_token)

            def compress(docs, *args, **kwargs):
                if docs:
                    calls.append(("compress", len(docs), None))
                return hf_compress(docs, *args, **kwargs)

            res.generate, res.documents.compress = generate, compress
            return res

        worker = BatchingWorker(open_resources, **options)
        worker.start()
        started.append(worker)
        return worker, calls

    yield model, make
    for w in started:
        w.stop()


def text_job(text, params):
    return GenerateJob(lambda res, text=text: ([text], text), params)


def test_jobs_are_batched_by_parameters_in_arrival_order(worker_for):
    model, make = worker_for
    worker, calls = make(window_s=0.3, max_batch=3)
    greedy4, greedy5 = DecodeParams(max_new_tokens=4), DecodeParams(max_new_tokens=5)
    seeded = DecodeParams(max_new_tokens=4, temperature=1.0, seed=7)
    worker.submit(CallJob(lambda res: time.sleep(0.3)))  # keeps the worker busy while jobs queue up
    jobs = [
        text_job("Question: a?\nAnswer:", greedy4),
        text_job("Question: b?\nAnswer:", greedy4),
        text_job("Question: c?\nAnswer:", seeded),
        text_job("", greedy4),  # "" -> empty prompt
        text_job("Question: d?\nAnswer:", greedy5),
        text_job("Question: e?\nAnswer:", greedy4),
    ]
    futures = [worker.submit(j) for j in jobs]
    compress = [worker.submit(CompressJob([t])) for t in ("One text.", "Another text.")]
    results = [f.exception(timeout=60) or f.result() for f in futures]
    compressed = [f.result(timeout=60)[0] for f in compress]

    # One call for the first three compatible greedy jobs (the failing "" among them), then each of
    # them alone so the failure stays its own; the seeded job alone; then the leftovers in order.
    assert [(k, n) for k, n, _ in calls if k == "generate"] == [("generate", n) for n in (3, 1, 1, 1, 1, 1, 1)]
    generate_params = [p for k, _, p in calls if k == "generate"]
    assert generate_params[4:] == [seeded, greedy5, greedy4]
    assert isinstance(results[3], ValueError) and "empty prompt" in str(results[3])
    for job, result in zip(jobs, results):
        if job is jobs[3]:
            continue
        out, extra = result
        p = job.params
        alone = model.generate([[extra]], max_new_tokens=p.max_new_tokens, temperature=p.temperature, seed=p.seed)[0]
        assert out.token_ids == alone.token_ids  # batching never changes an answer; the seed decides sampling
    assert [c for c in calls if c[0] == "compress"] == [("compress", 2, None)]  # both texts in one call
    direct = model.compress(["One text.", "Another text."])
    for c, d in zip(compressed, direct):
        assert c.n_vectors == d.n_vectors
    assert worker.largest_batch == 3


def test_a_job_that_fails_to_build_fails_alone(worker_for):
    _, make = worker_for
    worker, calls = make(window_s=0.3, max_batch=4)
    params = DecodeParams(max_new_tokens=2)

    def broken(res):
        raise KeyError("ghost")

    worker.submit(CallJob(lambda res: time.sleep(0.2)))
    bad = worker.submit(GenerateJob(broken, params))
    good = worker.submit(text_job("Question: a?\nAnswer:", params))
    assert isinstance(bad.exception(timeout=60), KeyError)
    assert good.result(timeout=60)[0].token_ids is not None
    assert [n for _, n, _ in calls] == [1]  # the broken job never reached the model


def test_startup_errors_surface_and_stopped_worker_refuses_jobs(saved_model, tmp_path):
    def failing():
        raise ValueError("store refused")

    worker = BatchingWorker(failing)
    with pytest.raises(ValueError, match="store refused"):
        worker.start()
    with pytest.raises(RuntimeError, match="not running"):
        worker.submit(CallJob(lambda res: None))
    with pytest.raises(ValueError, match="max_batch"):
        BatchingWorker(failing, max_batch=0)


def test_abandoned_jobs_are_dropped_and_a_full_queue_is_refused(worker_for):
    from arc_encoder.serving.worker import Busy

    model, make = worker_for
    worker, calls = make(window_s=0.0, max_batch=1, max_pending=3)
    release = threading.Event()
    worker.submit(CallJob(lambda res: release.wait(10)))  # holds the worker while jobs queue up
    time.sleep(0.2)
    built = []
    jobs = [
        GenerateJob(lambda res, i=i: (built.append(i) or [f"Question: {i}?\nAnswer:"], i), DecodeParams(4))
        for i in range(3)
    ]
    for job in jobs:
        worker.submit(job)
    with pytest.raises(Busy, match="3 requests waiting"):
        worker.submit(CompressJob(["one too many"]))
    jobs[0].abandoned.set()
    jobs[2].abandoned.set()
    release.set()
    out, extra = jobs[1].future.result(timeout=60)
    assert extra == 1 and built == [1]  # the abandoned ones were never built or run
    assert jobs[0].future.cancelled() and jobs[2].future.cancelled()
    assert worker.abandoned == 2
    assert [c[0] for c in calls] == ["generate"]


def test_a_generation_stops_at_the_next_token_once_cancelled(saved_model):
    _, model = saved_model
    prompts = [["Question: what is mentioned?\nAnswer:"], ["Question: who wrote it?\nAnswer:"]]
    full = model.generate(prompts, max_new_tokens=12, stop=[])
    cut = model.generate(prompts, max_new_tokens=12, on_token=lambda i, ids: i == 1)
    assert cut[0].token_ids == full[0].token_ids
    assert len(cut[1].token_ids) == 1 and cut[1].token_ids == full[1].token_ids[:1]
