"""The concept benchmark: its summary (gap closed, paired differences, the random-draw percentile, intervals over
photos and seeds) computed from per-crop test LPIPS of synthetic runs against the definitions written out by hand;
its plan; and its shared full-rank training on a tiny concept against separate runs."""

from __future__ import annotations

import numpy as np
import pytest

from bench.concept_bench import plan
from bench.concept_summary import job_id, markdown, method_runs, summarise


def _run(concept, method, seed, lpips, draw=None, seconds=10.0, nbytes=1000):
    return {
        "concept": concept,
        "method": method,
        "seed": seed,
        "draw": draw,
        "lpips_test": list(lpips),
        "kid_test": 0.01,
        "seconds_to_best": seconds,
        "stored_bytes": nbytes,
        "machine": "cpu A, 2 cores, 2 threads",
    }


@pytest.fixture
def result():
    rng = np.random.default_rng(0)
    photos = [f"p{i // 4}" for i in range(40)]  # 10 test photos, 4 crops each
    ident = 0.5 + 0.05 * rng.standard_normal(40)
    runs, refs = [], {}
    for c in ("a", "b"):
        refs[c] = {
            "photos": photos,
            "identity": {"lpips_test": list(ident), "kid_test": 0.05},
            "base": {"lpips_test": list(ident + 0.05), "kid_test": 0.06},
        }
        for s in (0, 1, 2):
            noise = 0.005 * rng.standard_normal(40)
            runs.append(_run(c, "full_ft", s, ident - 0.2 + noise, nbytes=10_000_000))
            runs.append(_run(c, "adapter", s, ident - 0.18 + noise, seconds=20.0, nbytes=150_000))
            runs.append(_run(c, "pix2pix", s, ident - 0.1 + noise, seconds=200.0))
        for d in range(5):
            runs.append(_run(c, "random", d % 3, ident - 0.15 - 0.02 * d, draw=d))
    return {"runs": runs, "references": refs}


def test_gap_closed_and_ratios_follow_their_definitions(result):
    s = summarise(result)
    # identity - adapter = 0.18 and identity - full = 0.20 on every crop (up to the seeds' noise): 90 %
    assert s["pooled"]["gap_closed"] == pytest.approx(0.9, abs=0.01)
    lo, hi = s["pooled"]["gap_closed_ci95"]["low"], s["pooled"]["gap_closed_ci95"]["high"]
    assert lo <= s["pooled"]["gap_closed"] <= hi and hi - lo < 0.05
    for c in ("a", "b"):
        pc = s["per_concept"][c]
        assert pc["gap_closed"]["mean"] == pytest.approx(0.9, abs=0.01)
        assert pc["time_ratio_vs_pix2pix"] == pytest.approx(0.1)
        # random draws are 0.15, 0.17, .. 0.23 below the identity: the adapter (0.18) beats draws 0 and 1 of 5
        assert pc["searched_vs_random"]["percentile"] == pytest.approx(40.0)
        d = s["detail"][c]["adapter_minus"]["full_ft"]
        assert d["mean"] == pytest.approx(0.02, abs=2e-3) and d["ci95"]["low"] > 0  # full FT better, resolved
    assert s["adapter_bytes_vs_full"] == pytest.approx(0.015)
    assert "gap closed" in markdown({**result, "summary": s})


def test_seeds_widen_the_interval_and_each_seed_is_reported():
    photos = [f"p{i // 4}" for i in range(40)]
    ident = np.linspace(0.4, 0.6, 40)
    refs = {
        "a": {
            "photos": photos,
            "identity": {"lpips_test": list(ident), "kid_test": 0.05},
            "base": {"lpips_test": list(ident), "kid_test": 0.05},
        }
    }
    runs = []
    for s, gap in enumerate((0.8, 0.9, 1.0)):  # the full fine-tune closes 0.2 on every crop, the adapter 0.2 * gap
        runs.append(_run("a", "full_ft", s, ident - 0.2))
        runs.append(_run("a", "adapter", s, ident - 0.2 * gap))
    out = summarise({"runs": runs, "references": refs})
    e = out["detail"]["a"]
    assert e["gap_closed_by_seed"] == pytest.approx({0: 0.8, 1: 0.9, 2: 1.0})
    assert e["gap_closed"]["mean"] == pytest.approx(0.9)
    ci = e["gap_closed"]["ci95"]  # the photos alone give no spread here: the width is the seeds'
    assert ci["low"] < 0.85 and ci["high"] > 0.95 and 0.79 < ci["low"] and ci["high"] < 1.01
    one = summarise({"runs": runs[:2], "references": refs})["detail"]["a"]["gap_closed"]["ci95"]
    assert one["high"] - one["low"] < 1e-9
    d = e["adapter_minus"]["full_ft"]  # 0.2 * (1 - 0.9) = +0.02, seeds make it uncertain, not photos
    assert d["mean"] == pytest.approx(0.02) and d["ci95"]["low"] < 0.02 < d["ci95"]["high"]


def test_seconds_compare_only_within_one_machine():
    from bench.concept_summary import time_ratio

    ad = [_run("a", "adapter", s, [0.1], seconds=20.0) for s in (0, 1)]
    p2p = [_run("a", "pix2pix", 0, [0.2], seconds=200.0)]
    assert time_ratio(ad, p2p)["time_ratio_vs_pix2pix"] == pytest.approx(0.1)  # another seed, the same machine
    slower = [dict(r, machine="cpu B, 2 cores, 2 threads", seconds_to_best=40.0) for r in ad]
    assert time_ratio(slower, p2p) == {}  # never across machines
    assert time_ratio([{k: v for k, v in r.items() if k != "machine"} for r in ad], p2p) == {}  # nor unknown ones
    assert time_ratio([*ad, *slower], p2p)["time_to_best"]["adapter_s"] == [20.0, 20.0]


def test_time_ratio_interval_comes_from_the_seeds_timings():
    from bench.concept_summary import ratio_replicates, time_ratio

    p2p = [_run("a", "pix2pix", s, [0.2], seconds=200.0) for s in (0, 1, 2)]
    same = [_run("a", "adapter", s, [0.1], seconds=20.0) for s in (0, 1, 2)]
    ci = time_ratio(same, p2p)["time_ratio_ci95"]  # identical timings: no spread
    assert ci["low"] == pytest.approx(0.1) and ci["high"] == pytest.approx(0.1)
    spread = [_run("a", "adapter", s, [0.1], seconds=t) for s, t in zip((0, 1, 2), (10.0, 20.0, 30.0))]
    ci = time_ratio(spread, p2p)["time_ratio_ci95"]  # resampled seeds: every mean lies in [10, 30] / 200
    assert 0.05 - 1e-9 <= ci["low"] < 0.09 and 0.11 < ci["high"] <= 0.15 + 1e-9
    # pooled: the mean over concepts of each one's replicate, so a concept without spread halves the width
    one, two = (
        ratio_replicates([([10.0, 20.0, 30.0], [200.0] * 3)]),
        ratio_replicates([([10.0, 20.0, 30.0], [200.0] * 3), ([20.0] * 3, [200.0] * 3)]),
    )
    assert np.allclose(two, (one + 0.1) / 2)


def test_no_summary_until_adapter_and_full_finetune_ran(result):
    result["runs"] = [r for r in result["runs"] if r["method"] != "full_ft"]
    assert summarise(result) == {}


def test_plan_covers_every_concept_fine_tunes_of_every_seed_first():
    jobs = plan(["a", "b"], [0, 1, 2], 5)
    assert len(jobs) == 2 * 3 * 9 + 2 * 5  # nine methods per concept and seed, five random draws per concept
    assert len(set(jobs)) == len(jobs)
    first = ("adapter", "full_ft", "searched", "uniform_all", "uniform", "from_base")
    assert [j[:2] for j in jobs[:6]] == [("a", m) for m in first]  # the fine-tunes of the base, concept by concept
    n_family = 2 * 3 * 6 + 2 * 5
    assert all(j[1] in (*first, "random") for j in jobs[:n_family])  # every seed's, before any other method
    assert [j[2] for j in jobs[:n_family]] == sorted(j[2] for j in jobs[:n_family])
    rest = [(j[2], j[1], j[0]) for j in jobs[n_family:]]
    assert rest == [(s, m, c) for s in (0, 1, 2) for m in ("pix2pix", "e2gan_scratch", "lora") for c in "ab"]
    assert sorted(j[3] for j in jobs if j[0] == "a" and j[1] == "random") == [0, 1, 2, 3, 4]


def test_two_methods_that_train_the_same_thing_share_one_run(result):
    runs = [dict(r, key=f"k{i}") for i, r in enumerate(result["runs"])]
    adapters = {r["seed"]: r for r in runs if r["concept"] == "a" and r["method"] == "adapter"}
    adapter = adapters[0]
    jobs = {job_id(r["concept"], r["method"], r["seed"], r["draw"]): r["key"] for r in runs}
    for seed, r in adapters.items():  # the shipped adapter is uniform on every layer: the same runs
        jobs[job_id("a", "uniform_all", seed, None)] = r["key"]
    jobs[job_id("a", "searched", 0, None)] = "not-run-yet"
    rows = method_runs({"runs": runs, "jobs": jobs})
    assert len(rows) == len(runs) + 3  # three more rows, no more training; the unfinished job has none
    twin = next(r for r in rows if r["method"] == "uniform_all")
    assert twin["lpips_test"] == adapter["lpips_test"] and (twin["concept"], twin["seed"]) == ("a", 0)
    assert not any(r["method"] == "searched" for r in rows)
    s = summarise({"runs": runs, "jobs": jobs, "references": result["references"]})
    assert s["detail"]["a"]["adapter_minus"]["uniform_all"]["mean"] == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- shared training, on a tiny concept


@pytest.fixture
def tiny_bench(monkeypatch):
    """A ConceptBench on a tiny generator and synthetic pairs (32 px), with the pipeline's own params."""
    import torch

    from bench import concept_bench
    from bench.common import ConceptBench
    from pipeline.adapt.lora import adaptable_layers, lora_spec
    from pipeline.config import load_params
    from pipeline.data.dataset import EvalPairs, PairData
    from pipeline.model.nets.generator import E2GANGenerator, GeneratorConfig
    from tests.conftest import synthetic_photo

    torch.manual_seed(0)
    G = E2GANGenerator(GeneratorConfig(ngf=8, heads=2, norm="film", skip=True)).eval()
    with torch.no_grad():  # trained-looking text norms (they start at zero)
        for n, p in G.named_parameters():
            if ".to_scale." in n or ".to_shift." in n:
                p.normal_(0, 0.05)
    imgs = [synthetic_photo(32, 32, seed=i) for i in range(12)]
    edit = [255 - im for im in imgs]
    as_t = lambda xs: torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    tokens, mask = torch.randn(1, 5, 384), torch.ones(1, 5, dtype=torch.bool)
    pairs = PairData(as_t(imgs[:8]), as_t(edit[:8]), [[0]] * 8, tokens, mask)
    val = EvalPairs(imgs[8:10], edit[8:10], ["v0", "v1"])
    test = EvalPairs(imgs[10:], edit[10:], ["t0", "t1"])
    spec = lora_spec({n: 2 for n in adaptable_layers(G)}, bias="all")
    params = load_params()
    cb = ConceptBench("tiny", params, G, {}, spec, pairs, val, test, tokens, mask, searched=spec)
    monkeypatch.setattr(concept_bench, "data_key", lambda cb: "tiny")
    monkeypatch.setattr(cb, "subset", lambda strategy: [0, 2, 4, 6])
    return cb, params


def test_the_full_finetune_shares_the_adapters_training_and_equals_a_run_of_its_own(tiny_bench):
    from bench.concept_bench import SCALES, job_config, run_family, run_one

    cb, params = tiny_bench
    if params.finetune_lora.train_as != "full_rank":
        pytest.skip("the shipped adapter trains as LoRA: no shared full-rank training")
    scale = SCALES["smoke"]
    jobs = {m: job_config(cb, m, 0, None, scale, params) for m in ("full_ft", "adapter", "lora")}
    assert jobs["full_ft"]["family"] is not None and jobs["full_ft"]["family"] == jobs["adapter"]["family"]
    assert jobs["lora"]["family"] is None  # LoRA trained directly is a training of its own
    assert len({j["key"] for j in jobs.values()}) == 3  # one run each
    # the family starts where finetune_lora does; `from_base` is the shipped adapter trained from the base as it
    # is: the very run an adapter job has when finetune_lora starts there, so such runs are kept, not retrained
    assert jobs["full_ft"]["start_head_scale"] == params.finetune_lora.start_head_scale
    from_base = job_config(cb, "from_base", 0, None, scale, params)
    f = params.finetune_lora.model_copy(update={"start_head_scale": 1.0})
    as_before = job_config(cb, "adapter", 0, None, scale, params.model_copy(update={"finetune_lora": f}))
    assert from_base["key"] == as_before["key"] and from_base["start_head_scale"] == 1.0
    assert (from_base["key"] == jobs["adapter"]["key"]) == (params.finetune_lora.start_head_scale == 1.0)
    alone = run_one(cb, "full_ft", 0, None, jobs["full_ft"], params)
    adapter, full = run_family(cb, [("adapter", None, jobs["adapter"]), ("full_ft", None, jobs["full_ft"])], 0, params)
    # the same training, read untruncated: the same val curve, best step and test scores as its own run
    assert [c["lpips_val"] for c in full["curve"]] == pytest.approx([c["lpips_val"] for c in alone["curve"]], abs=1e-6)
    assert full["best_step"] == alone["best_step"]
    assert full["lpips_test"] == pytest.approx(alone["lpips_test"], abs=1e-5)
    assert full["stored_bytes"] == alone["stored_bytes"] and full["method"] == "full_ft"
    # read through the rank-2 truncation it is a small peft adapter and scores differently
    assert adapter["stored_bytes"] < full["stored_bytes"] / 4 and set(adapter["ranks"].values()) == {2}
    assert adapter["lpips_test"] != full["lpips_test"]


def test_two_trained_methods_are_compared_on_the_seeds_both_ran(result):
    """pix2pix run at seed 0 only: adapter - pix2pix is seed 0's adapter against it, not every seed's mean."""
    runs = [r for r in result["runs"] if not (r["method"] == "pix2pix" and r["seed"] > 0)]
    for r in runs:
        if r["method"] == "adapter" and r["seed"] > 0:
            r["lpips_test"] = [x + 0.05 for x in r["lpips_test"]]  # seeds 1 and 2 worse: would leak into the diff
    s = summarise({**result, "runs": runs})
    for c in ("a", "b"):
        d = s["detail"][c]["adapter_minus"]["pix2pix"]
        ad = np.mean(
            [r["lpips_test"] for r in runs if r["concept"] == c and r["method"] == "adapter" and r["seed"] == 0]
        )
        p2p = np.mean([r["lpips_test"] for r in runs if r["concept"] == c and r["method"] == "pix2pix"])
        assert d["seeds"] == [0] and d["mean"] == pytest.approx(ad - p2p)
        assert "seeds" not in s["detail"][c]["adapter_minus"]["identity"]  # a reference has no seeds


def test_the_summary_counts_runs_made_by_other_training_code(result):
    from pipeline.orchestrate.dvc import code_hash

    now = code_hash("finetune_lora")[:16]
    runs = [dict(r) for r in result["runs"]]
    runs[0]["code"] = {"training": now, "commit": "abc"}
    runs[1]["code"] = {"training": "0" * 16, "commit": "def"}
    s = summarise({**result, "runs": runs})
    assert s["code"] == {
        "training_code": now,
        "runs": len(runs),
        "by_this_code": 1,
        "by_other_code": 1,
        "not_recorded": len(runs) - 2,
    }
    assert "1 by other code" in markdown({**result, "runs": runs, "summary": s})


def test_window_check_pairs_the_new_runs_with_the_set_aside_ones_of_the_earlier_plan(result):
    """bench.window_check: the runs the current plan names against those an earlier plan named (now set aside),
    on the same test crops and seeds."""
    from bench.window_check import compare

    keyed = []
    for i, r in enumerate(result["runs"]):
        if r["method"] in ("adapter", "full_ft"):
            old = {**r, "key": f"old{i}"}  # whole crops: 0.01 better on every crop, slower
            old.update(lpips_test=[x - 0.01 for x in r["lpips_test"]], seconds_to_best=40.0)
            keyed += [{**r, "key": f"new{i}"}, old]
    jobs_now = {job_id(r["concept"], r["method"], r["seed"], None): r["key"] for r in keyed if r["key"][:3] == "new"}
    jobs_then = {job_id(r["concept"], r["method"], r["seed"], None): r["key"] for r in keyed if r["key"][:3] == "old"}
    current = {
        "concepts": ["a", "b"],
        "references": result["references"],
        "jobs": jobs_now,
        "runs": [r for r in keyed if r["key"][:3] == "new"],
        "set_aside": [r for r in keyed if r["key"][:3] == "old"],
    }
    out = compare(current, {"jobs": jobs_then})
    assert out["concepts"] == ["a", "b"] and out["split"] == "test"
    for e in out["per_concept"].values():
        d = e["adapter"]["windows_minus_whole"]
        assert d["mean"] == pytest.approx(0.01) and d["ci95"]["low"] == pytest.approx(0.01)
        assert e["seeds"] == [0, 1, 2]
        assert e["adapter"]["seconds_to_best"] == {"windows": [20.0] * 3, "whole": [40.0] * 3}
        # the adapters close about 0.18 / 0.2 (windows) and 0.19 / 0.21 (whole crops) of the gap (the seed noise
        # moves both a little); both are each plan's own adapter and full fine-tune
        assert e["gap_closed"]["windows"]["mean"] == pytest.approx(0.18 / 0.2, abs=0.01)
        assert e["gap_closed"]["whole"]["mean"] == pytest.approx(0.19 / 0.21, abs=0.01)
        assert e["gap_closed"]["whole"]["mean"] > e["gap_closed"]["windows"]["mean"]
    assert out["pooled"]["adapter_windows_minus_whole_lpips"] == pytest.approx(0.01)
    assert compare({**current, "set_aside": []}, {"jobs": jobs_then})["concepts"] == []  # nothing to pair with


def test_models_from_scratch_train_on_the_scales_windows_and_runs_of_another_file_are_taken_over(tiny_bench):
    """The default scale trains pix2pix and the generator from scratch on windows of all pairs, scored less often
    than the fine-tunes; that is in their keys (whole-crop runs are not reused for them); a run of another results
    file is taken over only when this plan has its key, once."""
    from bench.concept_bench import SCALES, job_config, reusable

    cb, params = tiny_bench
    scale = SCALES["default"]
    jobs = {m: job_config(cb, m, 0, None, scale, params) for m in ("pix2pix", "e2gan_scratch", "full_ft")}
    assert jobs["pix2pix"]["patch"] == jobs["e2gan_scratch"]["patch"] == scale["scratch_patch"] == 96
    assert jobs["pix2pix"]["eval_every"] == scale["scratch_eval_every"] != jobs["full_ft"]["eval_every"]
    assert jobs["pix2pix"]["subset"] == list(range(len(cb.pairs.inputs)))  # every training pair
    whole = job_config(cb, "pix2pix", 0, None, {**scale, "scratch_patch": 0}, params)
    assert whole["patch"] == 0 and whole["key"] != jobs["pix2pix"]["key"]
    keys = {j["key"] for j in jobs.values()}
    other = {"runs": [{"key": jobs["pix2pix"]["key"], "x": 1}, {"key": jobs["pix2pix"]["key"], "x": 2}, {"key": "z"}]}
    taken = reusable([{"key": jobs["full_ft"]["key"]}], keys, other, "other.json")
    assert taken == [{"key": jobs["pix2pix"]["key"], "x": 1, "reused_from": "other.json"}]
    assert reusable([{"key": jobs["pix2pix"]["key"]}], keys, other, "other.json") == []


def test_the_plan_cost_counts_each_job_once():
    """A full-rank family's members share one job's wall time; a run taken over from another file counts with its
    time there; runs without a recorded time are left out."""
    from bench.concept_summary import plan_cost

    m = "cpu A, 2 cores, 2 threads"
    runs = [
        *({"method": x, "family": "f1", "key": x, "job_wall_seconds": 100.0, "machine": m} for x in ("a", "b", "c")),
        {"method": "adapter", "family": "f1", "key": "k", "job_wall_seconds": 50.0, "reused_from": "o.json"},
        {"method": "pix2pix", "family": None, "key": "p", "job_wall_seconds": 300.0, "machine": m},
        {"method": "pix2pix", "family": None, "key": "q"},
    ]
    cost = plan_cost(runs)
    assert cost == {
        "seconds": 450.0,
        "by_kind": {"fine-tunes of the base": 150.0, "pix2pix": 300.0},
        "jobs": 3,
        "machines": [m],
    }


def test_discriminator_warm_up_trains_only_the_discriminator_and_is_timed(tiny_bench):
    import torch

    from bench.common import train_curve, warm_discriminator
    from pipeline.model.nets.discriminator import GAN_LOSSES
    from pipeline.model.train import build_models

    cb, params = tiny_bench
    cfg = params.finetune_lora.train.model_copy(update={"batch_size": 4})
    m = build_models(cb.base, cfg)
    g_before = {k: v.clone() for k, v in m.G.state_dict().items()}
    d_before = {k: v.clone() for k, v in m.D.state_dict().items()}
    d_loss = GAN_LOSSES[cfg.gan_loss][0]

    def loss() -> float:
        x, y, text, mask = cb.pairs.batch(0, 8, 0, False)
        with torch.no_grad():
            return float(d_loss(m.D(x, y), m.D(x, m.G(x, text, mask))))

    start = loss()
    seconds = warm_discriminator(m, cb.pairs, cfg, 30)
    assert seconds > 0
    assert all(torch.equal(v, g_before[k]) for k, v in m.G.state_dict().items())  # G untouched
    assert any(not torch.equal(v, d_before[k]) for k, v in m.D.state_dict().items())
    assert loss() < 0.5 * start  # D learnt to tell the teacher's pairs from G's outputs
    # in a training curve: the warm-up changes what G learns, and its seconds count as training time
    import copy

    import bench.common as common

    real = common.warm_discriminator
    common_warm = lambda *a: real(*a) + 100.0  # noqa: E731 (a known amount on top of the real work)
    trained = []
    for w in (0, 30, 0):
        G = copy.deepcopy(cb.base)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(common, "warm_discriminator", common_warm)
            curve = train_curve(G, cb.pairs, cfg, 4, 2, lambda g: {}, d_warmup=w)
        trained.append((G.state_dict(), curve))
    same = lambda a, b: all(torch.equal(v, b[k]) for k, v in a.items())  # noqa: E731
    assert same(trained[0][0], trained[2][0]) and not same(trained[0][0], trained[1][0])
    assert [c["step"] for c in trained[1][1]] == [2, 4]
    assert all(c["train_seconds"] >= 100.0 for c in trained[1][1])
    assert all(c["train_seconds"] < 100.0 for c in trained[0][1])


def test_time_to_pix2pix_quality_reads_the_val_curves_seed_by_seed():
    from bench.concept_summary import time_ratio

    def curve(points):  # (step, seconds, val LPIPS)
        return [{"step": s, "train_seconds": t, "lpips_val": v} for s, t, v in points]

    p2p = [
        dict(_run("a", "pix2pix", 0, [0.2], seconds=200.0), curve=curve([(60, 50, 0.40), (240, 200, 0.30)])),
        dict(_run("a", "pix2pix", 1, [0.2], seconds=100.0), curve=curve([(60, 50, 0.35), (120, 100, 0.32)])),
        dict(_run("a", "pix2pix", 2, [0.2], seconds=100.0), curve=curve([(60, 50, 0.10), (120, 100, 0.12)])),
    ]
    ad = [  # seed 0 first gets to 0.30 at 20 s, seed 1 to 0.32 at 10 s, seed 2 never gets to 0.10
        dict(
            _run("a", "adapter", 0, [0.1], seconds=30.0), curve=curve([(30, 10, 0.31), (60, 20, 0.30), (90, 30, 0.2)])
        ),
        dict(_run("a", "adapter", 1, [0.1], seconds=30.0), curve=curve([(30, 10, 0.31), (60, 20, 0.33)])),
        dict(_run("a", "adapter", 2, [0.1], seconds=30.0), curve=curve([(30, 10, 0.2)])),
    ]
    m = time_ratio(ad, p2p)["time_to_pix2pix_quality"]
    assert m["by_seed"] == pytest.approx({0: 20 / 200, 1: 10 / 100}) and m["never_reached"] == [2]
    assert m["ratio"] == pytest.approx((0.1 + 0.1) / 2)
    assert "time_to_pix2pix_quality" not in time_ratio([{k: v for k, v in r.items() if k != "curve"} for r in ad], p2p)


def test_a_missing_base_or_rank_spec_names_the_stage_that_makes_it(tmp_path):
    from bench.common import ConceptBench

    base = tmp_path / "base"
    with pytest.raises(SystemExit, match=r"base/generator.safetensors is missing: run 'dvc repro train_base'"):
        ConceptBench.from_folders("winter", base, tmp_path / "pairs", tmp_path / "prompts", tmp_path / "lora.json")
    base.mkdir()
    (base / "generator.safetensors").write_bytes(b"")
    with pytest.raises(SystemExit, match=r"lora.json is missing: run 'dvc repro search_ranks'"):
        ConceptBench.from_folders("winter", base, tmp_path / "pairs", tmp_path / "prompts", tmp_path / "lora.json")
