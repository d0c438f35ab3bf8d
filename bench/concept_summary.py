"""The concept benchmark's figures from its finished runs: test LPIPS and KID per method, the gap closed, paired
differences, the random-draw percentile and the time ratio, with 95 % intervals from a bootstrap over test
photos (a photo's crops together) and over training seeds; the markdown table and the plot.

Gap closed = (LPIPS_identity - LPIPS_adapter) / (LPIPS_identity - LPIPS_full_finetune), test LPIPS at each run's
val-best step, averaged over seeds; pooled: the mean gaps over concepts, the same ratio.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.evaluate.sets import photo_resamples

METHODS = (
    "adapter",
    "full_ft",
    "searched",
    "uniform_all",
    "uniform",
    "from_base",
    "pix2pix",
    "e2gan_scratch",
    "lora",
)
FAMILY = METHODS[:6]  # fine-tunes of the base (one full-rank training per concept and seed under "full_rank")
LABELS = {
    "identity": "identity (input unchanged)",
    "base": "base, no adapter",
    "pix2pix": "pix2pix ResNet-9, from scratch",
    "e2gan_scratch": "E²GAN generator, from scratch",
    "full_ft": "full fine-tune of the base",
    "adapter": "shipped adapter",
    "searched": "searched ranks (E²GAN), crucial layers",
    "uniform": "uniform rank, crucial layers, same params",
    "uniform_all": "every layer, uniform rank, same params",
    "random": "random ranks, adapter's layers, same params",
    "lora": "shipped layers and ranks, LoRA trained directly",
    "from_base": "shipped adapter, trained from the base as it is",
}
# what the adapter is compared with, in the order of the table
COMPARED = (
    "identity",
    "base",
    "pix2pix",
    "e2gan_scratch",
    "full_ft",
    "from_base",
    "lora",
    "searched",
    "uniform_all",
    "uniform",
)
# the summary's per-concept figures: method -> its name there
HEADLINE = {
    "identity": "identity",
    "base": "base",
    "pix2pix": "pix2pix",
    "e2gan_scratch": "e2gan_scratch",
    "full_ft": "full_finetune",
    "adapter": "adapter",
}
N_BOOT = 1000


def job_id(concept: str, method: str, seed: int, draw: int | None) -> str:
    return f"{concept}|{method}|{seed}|{'-' if draw is None else draw}"


def method_runs(result: dict) -> list[dict]:
    """One row per planned job with a finished run: a run trained once serves every job with its key (e.g.
    `uniform_all` when the shipped adapter is one rank on every layer), labelled with that job's method."""
    jobs = result.get("jobs")
    if not jobs:
        return result["runs"]
    by_key = {r["key"]: r for r in result["runs"] if "key" in r}
    rows = []
    for job, key in jobs.items():
        if key in by_key:
            c, m, seed, draw = job.split("|")
            rows.append(
                {
                    **by_key[key],
                    "concept": c,
                    "method": m,
                    "seed": int(seed),
                    "draw": None if draw == "-" else int(draw),
                }
            )
    return rows


# ----------------------------------------------------------------------------- per-seed curves and their bootstrap


class Curves:
    """Per-crop test LPIPS of one method on one concept, per training seed (the mean over the seed's runs, e.g.
    random draws); a reference (identity, base) has one curve and no seeds."""

    def __init__(self, by_seed: dict[int | None, np.ndarray]):
        self.by_seed = {s: np.asarray(v, dtype=np.float64) for s, v in sorted(by_seed.items(), key=lambda x: str(x[0]))}
        self.seeds = list(self.by_seed)

    @classmethod
    def of_runs(cls, runs: list[dict]) -> Curves:
        seeds = sorted({r["seed"] for r in runs})
        return cls({s: np.mean([r["lpips_test"] for r in runs if r["seed"] == s], axis=0) for s in seeds})

    def mean(self, draw: list | None = None) -> np.ndarray:
        """Per crop, the mean over `draw` (seeds, with repeats) or over every seed."""
        return np.mean([self.by_seed[s] for s in (self.seeds if draw is None else draw)], axis=0)


class Resamples:
    """N_BOOT bootstrap replicates: each a resample of the test photos (their crops together) and, per seed set,
    a resample of its seeds (the same draw for every method trained on the same seeds, so methods read from one
    training stay paired)."""

    def __init__(self, photos: list[str], seed: int = 0):
        self.photos = photos
        self.crops = photo_resamples(photos, N_BOOT, seed)
        self.rng = np.random.default_rng(seed + 1)
        self._seed_draws: dict[tuple, list[list]] = {}

    def seeds(self, seeds: list) -> list[list]:
        key = tuple(seeds)
        if key not in self._seed_draws:
            self._seed_draws[key] = [list(self.rng.choice(len(seeds), len(seeds))) for _ in range(N_BOOT)]
        return [[seeds[k] for k in d] for d in self._seed_draws[key]]

    def replicates(self, *curves: Curves):
        """Per replicate: (crop indices, each curve's mean over its resampled seeds)."""
        draws = [self.seeds(c.seeds) for c in curves]
        for b, idx in enumerate(self.crops):
            yield idx, [c.mean(d[b]) for c, d in zip(curves, draws)]


def _ci(values) -> dict:
    low, high = np.percentile(np.asarray(values, dtype=np.float64), [2.5, 97.5])
    return {"low": float(low), "high": float(high)}


def lpips_interval(c: Curves, rs: Resamples) -> dict:
    return {
        "mean": float(c.mean().mean()),
        "ci95": _ci([m[i].mean() for i, (m,) in rs.replicates(c)]),
        "seeds": c.seeds,
    }


def paired(a: Curves, b: Curves, rs: Resamples) -> dict:
    """Method a minus method b on the same test crops: the mean difference and its 95 % interval over photos and
    seeds. An interval that excludes 0 is a difference these photos and seeds support; one that contains 0 is a
    tie."""
    common = [s for s in a.seeds if s in b.seeds and s is not None]
    if common and (common != a.seeds or common != b.seeds):  # two trained methods: on the seeds both ran
        a, b = (Curves({s: c.by_seed[s] for s in common}) for c in (a, b))
    d = [(x[i] - y[i]).mean() for i, (x, y) in rs.replicates(a, b)]
    n = len(a.mean())
    out = {"mean": float((a.mean() - b.mean()).mean()), "ci95": _ci(d), "n": n, "photos": len(set(rs.photos))}
    return {**out, "seeds": common} if common else out


def gap_closed(identity: list[Curves], adapter: list[Curves], full: list[Curves], rs: Resamples) -> dict:
    """The share of the identity -> full fine-tune gap the adapter closes, pooled over the given concepts (one
    concept: its own), with its interval over photos and seeds."""

    def ratio(ids, ads, fts, i) -> float:
        num = np.mean([(x[i] - y[i]).mean() for x, y in zip(ids, ads)])
        return float(num / np.mean([(x[i] - y[i]).mean() for x, y in zip(ids, fts)]))

    all_crops = np.arange(len(rs.photos))
    point = ratio([c.mean() for c in identity], [c.mean() for c in adapter], [c.mean() for c in full], all_crops)
    reps = [list(rs.replicates(*x)) for x in zip(identity, adapter, full)]  # per concept: its replicates
    boot = [
        ratio([r[b][1][0] for r in reps], [r[b][1][1] for r in reps], [r[b][1][2] for r in reps], reps[0][b][0])
        for b in range(N_BOOT)
    ]
    return {"mean": point, "ci95": _ci(boot)}


# ----------------------------------------------------------------------------- the summary


def time_ratio(adapter: list[dict], pix2pix: list[dict]) -> dict:
    """The adapter's training seconds to its val-best over pix2pix's, from runs timed on the same machine only
    (the mean over its seeds of each; a run that names no machine is never compared). Empty without a pair."""
    machines = {r.get("machine") for r in adapter} & {r.get("machine") for r in pix2pix} - {None}
    if not machines:
        return {}
    m = sorted(machines, key=lambda m: -sum(r.get("machine") == m for r in (*adapter, *pix2pix)))[0]
    a = [r["seconds_to_best"] for r in adapter if r.get("machine") == m]
    p = [r["seconds_to_best"] for r in pix2pix if r.get("machine") == m]
    out = {
        "time_ratio_vs_pix2pix": float(np.mean(a) / max(np.mean(p), 1e-9)),
        "time_ratio_ci95": _ci(ratio_replicates([(a, p)])),
        "time_to_best": {"adapter_s": a, "pix2pix_s": p, "machine": m},
    }
    match = time_to_match([r for r in adapter if r.get("machine") == m], [r for r in pix2pix if r.get("machine") == m])
    return {**out, **match}


def ratio_replicates(pairs: list[tuple[list[float], list[float]]], seed: int = 0) -> np.ndarray:
    """N_BOOT bootstrap replicates of the mean over concepts of (mean adapter seconds / mean pix2pix seconds), each
    concept's adapter runs and pix2pix runs resampled (with replacement) on their own: the spread that the seeds'
    timings and val-best steps give the time ratio."""
    rng = np.random.default_rng(seed)
    boot = np.zeros(N_BOOT)
    for a, p in pairs:
        a, p = np.asarray(a, dtype=np.float64), np.asarray(p, dtype=np.float64)
        ra = a[rng.integers(0, len(a), (N_BOOT, len(a)))].mean(axis=1)
        rp = p[rng.integers(0, len(p), (N_BOOT, len(p)))].mean(axis=1)
        boot += ra / np.maximum(rp, 1e-9)
    return boot / max(len(pairs), 1)


def time_to_match(adapter: list[dict], pix2pix: list[dict]) -> dict:
    """The paper's form of the comparison: per seed, the adapter's training seconds to the first scored step whose
    val LPIPS is at or below pix2pix's val-best, over pix2pix's seconds to that best (the same val crops). The
    adapter's first scored step bounds it from above. Seeds where the adapter never gets there are counted, not
    averaged. Empty without a seed both ran."""
    best = {r["seed"]: r for r in pix2pix}
    ratios, missed = {}, []
    for r in adapter:
        p = best.get(r["seed"])
        if p is None or not p.get("curve") or not r.get("curve"):
            continue
        target = min(c["lpips_val"] for c in p["curve"])
        first = next((c for c in r["curve"] if c["lpips_val"] <= target), None)
        if first is None:
            missed.append(r["seed"])
        else:
            ratios[r["seed"]] = first["train_seconds"] / max(p["seconds_to_best"], 1e-9)
    if not ratios and not missed:
        return {}
    return {
        "time_to_pix2pix_quality": {
            "ratio": float(np.mean(list(ratios.values()))) if ratios else None,
            "by_seed": ratios,
            "never_reached": missed,
        }
    }


def _concept(c: str, ref: dict, rows: list[dict], rs: Resamples) -> tuple[dict, dict[str, Curves]] | None:
    """One concept's figures and the curves they were read from (None until its adapter and full fine-tune have
    run); the median random draw's curve is `median_draw`."""
    mine = [r for r in rows if r["concept"] == c]
    by = {m: [r for r in mine if r["method"] == m] for m in (*METHODS, "random")}
    if not by["adapter"] or not by["full_ft"]:
        return None
    curves = {m: Curves({None: ref[m]["lpips_test"]}) for m in ("identity", "base")}
    curves.update({m: Curves.of_runs(v) for m, v in by.items() if v})
    kid = {m: ref[m]["kid_test"] for m in ("identity", "base")}
    kid.update({m: float(np.mean([r["kid_test"] for r in v])) for m, v in by.items() if v})
    ad, ft = curves["adapter"], curves["full_ft"]
    per_seed = {
        s: gap_closed([curves["identity"]], [Curves({s: ad.by_seed[s]})], [Curves({s: ft.by_seed[s]})], rs)["mean"]
        for s in ad.seeds
        if s in ft.by_seed
    }
    entry = {
        "seeds": ad.seeds,
        "lpips": {m: lpips_interval(v, rs) for m, v in curves.items()},
        "kid": kid,
        "kid_by_seed": {
            m: {r["seed"]: r["kid_test"] for r in by[m]} for m in ("adapter", "full_ft", "pix2pix") if by[m]
        },
        "gap_closed": gap_closed([curves["identity"]], [ad], [ft], rs),
        "gap_closed_by_seed": per_seed,
        "adapter_minus": {m: paired(ad, curves[m], rs) for m in COMPARED if m in curves},
    }
    ratio = time_ratio(by["adapter"], by["pix2pix"])
    if ratio:
        entry.update(ratio)
    if by["random"]:
        means = sorted((float(np.mean(r["lpips_test"])), i) for i, r in enumerate(by["random"]))
        a = float(ad.mean().mean())
        median = by["random"][means[len(means) // 2][1]]
        curves["median_draw"] = Curves({median["seed"]: median["lpips_test"]})
        entry["searched_vs_random"] = {
            "draws": len(means),
            "percentile": float(np.mean([a < x for x, _ in means]) * 100),  # share of draws the adapter beats
            "median_draw": paired(ad, curves["median_draw"], rs),
        }
    return entry, curves


def code_of_runs(runs: list[dict]) -> dict:
    """Which training code made the runs in the figures: the checkout's (the hash finetune_lora's work folders
    use), other code, or code not recorded (runs made before runs recorded it)."""
    from pipeline.orchestrate.dvc import code_hash

    now = code_hash("finetune_lora")[:16]
    made = [(r.get("code") or {}).get("training") for r in runs]
    return {
        "training_code": now,
        "runs": len(made),
        "by_this_code": sum(m == now for m in made),
        "by_other_code": sum(m is not None and m != now for m in made),
        "not_recorded": sum(m is None for m in made),
    }


def plan_cost(runs: list[dict]) -> dict:
    """The wall time the runs took to make (training, val scoring, test scoring), each job once: the members of a
    full-rank family share one job, and a run taken over from another file counts with its time there. Seconds by
    kind of job ("fine-tunes of the base" for the families) and in all, with the machines they ran on."""
    jobs: dict = {}
    for r in runs:
        if r.get("job_wall_seconds") is None:
            continue
        kind = "fine-tunes of the base" if r.get("family") else r["method"]
        jobs.setdefault((r.get("family") or r.get("key"), r.get("reused_from")), (kind, r["job_wall_seconds"]))
    by: dict[str, float] = {}
    for kind, sec in jobs.values():
        by[kind] = by.get(kind, 0.0) + sec
    return {
        "seconds": round(sum(by.values()), 1),
        "by_kind": {k: round(v, 1) for k, v in sorted(by.items())},
        "jobs": len(jobs),
        "machines": sorted({r["machine"] for r in runs if r.get("machine")}),
    }


def summarise(result: dict) -> dict:
    rows, refs = method_runs(result), result["references"]
    photos = next(iter(refs.values()))["photos"] if refs else []
    rs = Resamples(photos)  # every concept has the same test photos: one bootstrap for all, so pooling is paired
    found = {c: out for c, ref in refs.items() if (out := _concept(c, ref, rows, rs)) is not None}
    if not found:
        return {}
    per = {c: entry for c, (entry, _) in found.items()}
    curves = {c: cv for c, (_, cv) in found.items()}
    done = sorted(per)
    pooled = gap_closed(*[[curves[c][m] for c in done] for m in ("identity", "adapter", "full_ft")], rs)
    ad = [r for r in rows if r["method"] == "adapter"]
    full = [r for r in rows if r["method"] == "full_ft"]
    summary = {
        "concepts_done": done,
        "seeds_done": sorted({s for e in per.values() for s in e["seeds"]}),
        "pooled": {"gap_closed": pooled["mean"], "gap_closed_ci95": pooled["ci95"]},
        "per_concept": {
            c: {
                "seeds": e["seeds"],
                "gap_closed": e["gap_closed"],
                "lpips": {k: e["lpips"][m]["mean"] for m, k in HEADLINE.items() if m in e["lpips"]},
                "kid": {k: e["kid"][m] for m, k in HEADLINE.items() if m in e["kid"]},
                **{
                    k: e[k]
                    for k in (
                        "time_ratio_vs_pix2pix",
                        "time_ratio_ci95",
                        "time_to_pix2pix_quality",
                        "searched_vs_random",
                    )
                    if k in e
                },
            }
            for c, e in per.items()
        },
        "adapter_bytes_vs_full": float(
            np.mean([r["stored_bytes"] for r in ad]) / np.mean([r["stored_bytes"] for r in full])
        ),
        "detail": per,
    }
    summary["code"] = code_of_runs([r for r in rows if r["concept"] in per])
    summary["cost"] = plan_cost(result["runs"])
    ratios = [e["time_ratio_vs_pix2pix"] for e in per.values() if "time_ratio_vs_pix2pix" in e]
    if ratios:
        summary["time_ratio_vs_pix2pix"] = float(np.mean(ratios))
        times = [
            (e["time_to_best"]["adapter_s"], e["time_to_best"]["pix2pix_s"])
            for e in per.values()
            if "time_to_best" in e
        ]
        summary["time_ratio_ci95"] = _ci(ratio_replicates(times))
    matched = [e["time_to_pix2pix_quality"] for e in per.values() if "time_to_pix2pix_quality" in e]
    if matched:  # the mean over concepts of each concept's mean over the seeds that got there
        summary["time_to_pix2pix_quality"] = {
            "ratio": float(np.mean([m["ratio"] for m in matched if m["ratio"] is not None]))
            if any(m["ratio"] is not None for m in matched)
            else None,
            "never_reached": sum(len(m["never_reached"]) for m in matched),
            "note": "adapter's training seconds to pix2pix's val-best val LPIPS over pix2pix's seconds to it; "
            "bounded above by the adapter's first scored step",
        }
    svr = {c: e["searched_vs_random"] for c, e in per.items() if "searched_vs_random" in e}
    if svr:  # the adapter minus each concept's median draw, averaged over concepts on the same photos
        medians = [(curves[c]["adapter"], curves[c]["median_draw"]) for c in svr]
        diffs = [list(rs.replicates(a, b)) for a, b in medians]
        boot = [np.mean([(d[b][1][0] - d[b][1][1])[d[b][0]].mean() for d in diffs]) for b in range(N_BOOT)]
        summary["searched_vs_random"] = {
            "percentile": float(np.mean([s["percentile"] for s in svr.values()])),
            "diff": float(np.mean([(a.mean() - b.mean()).mean() for a, b in medians])),
            "ci95": _ci(boot),
            "note": "test LPIPS, the adapter minus each concept's median random draw, averaged over concepts; "
            "interval over photos and seeds (per concept in detail)",
        }
    return summary


# ----------------------------------------------------------------------------- table and plot


def ci_text(ci: dict | None) -> str:
    """' [low, high]' for a ratio's interval, or nothing (files written before intervals were kept)."""
    return f" [{ci['low']:.3f}, {ci['high']:.3f}]" if ci else ""


def markdown(result: dict) -> str:
    s = result.get("summary") or {}
    if not s:
        return "No concept has both its adapter and full fine-tune runs yet.\n"
    p = s["pooled"]
    out = [
        f"Test split, seeds {s['seeds_done']}, concepts {', '.join(s['concepts_done'])}; 95 % intervals from a "
        f"bootstrap over the test photos and the training seeds. Pooled gap closed by the adapter: "
        f"**{p['gap_closed']:.1%}** [{p['gap_closed_ci95']['low']:.1%}, {p['gap_closed_ci95']['high']:.1%}]; "
        f"adapter bytes / full checkpoint: {s['adapter_bytes_vs_full']:.2%}"
        + (
            f"; adapter's time to its val-best / pix2pix's, mean over concepts: {s['time_ratio_vs_pix2pix']:.3f}"
            f"{ci_text(s.get('time_ratio_ci95'))} (interval over the training seeds)."
            if "time_ratio_vs_pix2pix" in s
            else "."
        ),
        "",
        "| concept | method | seeds | test LPIPS [95 % CI] | test KID | adapter − method (LPIPS) [95 % CI] |",
        "|---|---|---|---|---|---|",
    ]
    for c, e in s["detail"].items():
        for m in (*COMPARED, "random", "adapter"):
            if m not in e["lpips"]:
                continue
            lp, d = e["lpips"][m], e["adapter_minus"].get(m)
            if m == "random" and "searched_vs_random" in e:
                d = e["searched_vs_random"]["median_draw"]
            diff = f"{d['mean']:+.4f} [{d['ci95']['low']:+.4f}, {d['ci95']['high']:+.4f}]" if d else ""
            if m == "random" and d:
                diff += " (median draw)"
            seeds = ",".join(str(x) for x in lp.get("seeds", []) if x is not None) or "–"
            out.append(
                f"| {c} | {LABELS[m]} | {seeds} | {lp['mean']:.4f} [{lp['ci95']['low']:.4f}, {lp['ci95']['high']:.4f}] | "
                f"{e['kid'][m]:.4f} | {diff} |"
            )
        g = e["gap_closed"]
        by_seed = ", ".join(f"seed {k}: {v:.1%}" for k, v in e.get("gap_closed_by_seed", {}).items())
        extra = (
            f"; adapter time to val-best / pix2pix's: {e['time_ratio_vs_pix2pix']:.3f}{ci_text(e.get('time_ratio_ci95'))}"
            if "time_ratio_vs_pix2pix" in e
            else ""
        )
        match = e.get("time_to_pix2pix_quality")
        if match and match["ratio"] is not None:
            extra += f"; to pix2pix's val-best LPIPS: {match['ratio']:.3f}"
        out.append(
            f"| {c} | **gap closed** | | {g['mean']:.1%} [{g['ci95']['low']:.1%}, {g['ci95']['high']:.1%}] ({by_seed}){extra} | | |"
        )
    cost = s.get("cost")
    if cost and cost["jobs"]:
        kinds = ", ".join(f"{k} {v / 3600:.2f} h" for k, v in cost["by_kind"].items())
        out += [
            "",
            f"Wall time of the {cost['jobs']} jobs that made these runs: {cost['seconds'] / 3600:.2f} h ({kinds}), "
            f"on {'; '.join(cost['machines'])}.",
        ]
    code = s.get("code")
    if code:
        out += [
            "",
            f"Training code of the {code['runs']} runs: {code['by_this_code']} by this checkout's "
            f"({code['training_code']}), {code['by_other_code']} by other code, {code['not_recorded']} not recorded "
            "(made before runs recorded it).",
        ]
    return "\n".join(out) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    from pipeline.core.plots import save_fig

    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = method_runs(result)
    # the shipped adapter last and marked: a method that trains the same thing (e.g. the uniform allocation it
    # ships) shares its runs and would hide it
    for m in (*(m for m in METHODS if m != "adapter"), "random", "adapter"):
        rs = [r for r in rows if r["method"] == m]
        if rs:
            ax.scatter(
                [r["stored_bytes"] for r in rs],
                [float(np.mean(r["lpips_test"])) for r in rs],
                label=LABELS[m],
                **({"s": 70, "marker": "*", "zorder": 3} if m == "adapter" else {"s": 18}),
            )
    ax.set_xscale("log")
    ax.set_xlabel("stored bytes per concept (log)")
    ax.set_ylabel("test LPIPS vs teacher (lower is better)")
    ax.set_title("Concept benchmark: quality vs what a concept costs to ship")
    ax.legend(fontsize=8)
    save_fig(fig, path)
