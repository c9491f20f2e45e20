"""bench/gpu.py: the parts that need no run (the facts, the split, the slices, the budget).

The bench runs once on a GPU that nobody here can reach, so these tests hold it to what that run
needs: the arithmetic of the split and the scaling holds, a failing part does not stop the others,
and the budget skips instead of overrunning.
"""

from __future__ import annotations

import io

import pytest
import torch

from bench.gpu_facts import split_step
from bench.gpu_models import PRIORS, attn_funcs, build_prior, prior_config, step_bytes
from bench.gpu_record import Budget, Recorder, run_part
from sampler.jukebox.transformer import BLOCK, CROSS, DENSE, PREV_BLOCK, PRIME, TRANSPOSE, Conv1D

# ---- without a run


def test_the_split_adds_up_and_projects_to_an_h100() -> None:
    split = split_step(10.0, int(3.35e9), read_bandwidth=4.0e12, nominal=4.8e12)
    assert split.streaming_ms == pytest.approx(0.8375)
    assert split.streaming_ms + split.fixed_ms == pytest.approx(10.0)
    assert split.efficiency == pytest.approx(4.0 / 4.8)
    assert split.h100_ms == pytest.approx(3.35e9 / (3.35e12 * 4.0 / 4.8) * 1e3 + split.fixed_ms)
    assert split_step(10.0, int(3.35e9), 4.0e12, None).efficiency == 1.0  # a device the bench doesn't know


def test_slices_keep_the_published_layer_pattern() -> None:
    for spec in PRIORS.values():
        full, sliced = (
            attn_funcs(prior_config(spec, False)),
            attn_funcs(prior_config(spec, False, spec.layers)),
        )
        assert sliced == full[spec.layers.start : spec.layers.stop]
    assert (
        attn_funcs(prior_config(PRIORS["upsampler"], False, PRIORS["upsampler"].layers))
        == [
            BLOCK,
            TRANSPOSE,
            PREV_BLOCK,
        ]
        * 2
    )
    five_b = attn_funcs(prior_config(PRIORS["5b_lyrics"], False, PRIORS["5b_lyrics"].layers))
    assert five_b.count(CROSS) == 1 and five_b[-1] == CROSS
    one_b = attn_funcs(prior_config(PRIORS["1b_lyrics"], False, PRIORS["1b_lyrics"].layers))
    assert one_b[0] == PRIME and one_b[-1] == DENSE


def test_bytes_per_step_from_the_shapes_match_the_built_slice_and_the_plan() -> None:
    for spec in PRIORS.values():
        prior = build_prior(
            spec, dry_run=True, device=torch.device("cpu"), dtype=torch.float16, layers=spec.layers
        )
        walked = sum(
            (m.w.numel() + m.b.numel()) * m.w.element_size()
            for name, m in prior.prior.transformer.named_modules()
            if isinstance(m, Conv1D) and not name.endswith("c_enc_kv")
        )
        assert prior.prior.x_out is not None
        head = prior.prior.x_out.weight
        computed = step_bytes(prior.config, attn_funcs(prior.config), torch.float16, 3, static=True)
        assert computed["weights"] == walked and computed["head"] == head.numel() * head.element_size()
    # GPU-PLAN §3: 22.1 MB per upsampler layer and a 15.7 MB head, 1.61 GB a step; 10.8 GB at the 5b_lyrics top
    upsampler = prior_config(PRIORS["upsampler"], False)
    bytes_up = step_bytes(upsampler, attn_funcs(upsampler), torch.float16, 3, static=False)
    assert bytes_up["weights"] / 72 == pytest.approx(22.1e6, rel=0.01)
    assert bytes_up["head"] == pytest.approx(15.7e6, rel=0.01)
    assert bytes_up["total"] == pytest.approx(1.61e9, rel=0.02)
    top = prior_config(PRIORS["5b_lyrics"], False)
    assert step_bytes(top, attn_funcs(top), torch.float16, 3, static=False)["total"] == pytest.approx(
        10.8e9, rel=0.02
    )


def _recorder() -> Recorder:
    return Recorder(None, stream=io.StringIO())


def test_a_failing_part_writes_an_error_and_the_next_part_runs() -> None:
    recorder, budget = _recorder(), Budget(None, reserve=0)

    def fails() -> None:
        raise ValueError("boom")

    run_part(recorder, budget, "E", "fails", 0.0, fails)
    run_part(recorder, budget, "F", "works", 0.0, lambda: recorder.emit("F", "figure", value=1))
    run_part(
        recorder, budget, "G", "injected", 0.0, lambda: recorder.emit("G", "figure"), inject_failure=True
    )
    kinds = [(r["section"], r["kind"], r.get("status")) for r in recorder.records]
    assert kinds == [
        ("E", "error", None),
        ("E", "section", "error"),
        ("F", "figure", None),
        ("F", "section", "done"),
        ("G", "error", None),
        ("G", "section", "error"),
    ]
    assert "ValueError: boom" in recorder.records[0]["error"]


@pytest.mark.skipif(not hasattr(__import__("signal"), "setitimer"), reason="needs POSIX interval timers")
def test_a_part_that_overruns_the_budget_is_stopped() -> None:
    recorder = _recorder()

    def forever() -> None:
        while True:
            sum(range(1000))

    run_part(recorder, Budget(0.3, reserve=0.0), "C", "forever", 0.0, forever)
    assert [r["kind"] for r in recorder.records] == ["error", "section"]
    assert "BudgetSpent" in recorder.records[0]["error"] and recorder.records[1]["status"] == "stopped"
    run_part(recorder, Budget(0.3, reserve=0.0), "C", "too big", 1.0, forever)  # does not start at all
    assert recorder.records[-2]["kind"] == "skip" and "budget" in recorder.records[-2]["reason"]
