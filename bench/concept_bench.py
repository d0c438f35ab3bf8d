"""The concept benchmark: does a new concept's adapter do the edit, against everything simpler, over concepts and
seeds? Every method trains with the pipeline's own loop on the same concept's training pairs at one scale;
its best step is chosen on the concept's val photos and every figure is read on its test photos (all test
crops), with 95 % intervals from a bootstrap over test photos and training seeds and paired differences on the
same crops (the figures: bench/concept_summary.py).

Per concept and seed:
  pix2pix        pix2pix ResNet-9 from scratch, all training pairs (on the same windows as every other method)
  e2gan_scratch  the E²GAN generator from scratch (random init), all training pairs
  full_ft        full fine-tune of the base, the adapter's data subset and start (finetune_lora.start_head_scale)
  adapter        the shipped adapter: search_ranks' spec (models/ranks/lora.json), finetune_lora's settings and subset
  from_base      the shipped adapter trained from the base as it is (start_head_scale 1): what the start changes
  searched       E²GAN's greedy rank allocation on the crucial layers (models/ranks/searched.json)
  uniform        one rank on the crucial layers, at about the shipped adapter's LoRA parameters
  uniform_all    one rank on every adaptable layer, at about the same parameters
  lora           the shipped adapter's layers and ranks, its LoRA factors trained directly (train_as "lora")
(`from_base` and `lora` only with --methods), and per concept `--random` allocations of the shipped adapter's
layers at its parameter count (draw d is trained with seed d mod the number of seeds). Adapters train as finetune_lora does (`train_as`): with
"full_rank", every adapter job of a concept and seed is read from one full-rank fine-tune of the base, each
through its own spec's truncated adapter (its val curve, its val-best step on test). Two methods that train the
same thing (e.g. `uniform_all` when the shipped adapter is one rank on every layer) share one run.

Concepts in params.yaml use the pipeline's pairs (`make run` first); others must be filter concepts of the
pool: their prompts and pairs are made here with the pipeline's own stages' code, under data/.work/concept_bench.

    python -m bench.concept_bench                       # 4 concepts x 3 seeds at the default scale
    python -m bench.concept_bench --scale smoke         # a few steps: checks the plumbing in minutes
    python -m bench.concept_bench --methods pix2pix     # train only these (and the adapter, full fine-tune)
    python -m bench.concept_bench --summary-only        # rewrite the summary, table and plot from the runs
    python -m bench.concept_bench --reuse bench/results/concept_bench_window_base.json  # take over its runs

Every finished run is written to bench/results/concept_bench.json at once (with the summary, a markdown table
and a plot), so a killed benchmark resumes where it stopped. Each run carries a key of everything that decides
it (the spec, the training settings, the data subset, the base's and the pairs' hashes): a rerun reuses the
runs whose key a job of the plan still has and sets the others aside in the file's `set_aside` (never in the
figures; back in when a setting switches back); `--fresh` starts over. The code is not in the key (a change to
the training code would otherwise discard hours of runs): each run records the training code's hash and the
commit it was trained at (`code`), and the summary counts the runs made by other code than the checkout's.

Gap closed = (LPIPS_identity - LPIPS_adapter) / (LPIPS_identity - LPIPS_full_finetune), test LPIPS at each
run's val-best step averaged over seeds; pooled = the mean gaps over concepts, the same ratio.
"""

from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import json
import time
from pathlib import Path

import torch

from bench.common import RESULTS, ConceptBench, code_version, machine, train_curve
from bench.concept_summary import FAMILY, METHODS, job_id, markdown, plot, summarise
from pipeline.adapt.lora import (
    adaptable_layers,
    add_lora_spec,
    round_to,
    spec_ranks,
    trainable_parameters,
)
from pipeline.adapt.ranks import count, random_ranks, spec_for
from pipeline.config import load_params
from pipeline.core.io import atomic_write_json, atomic_write_text, sha256_file
from pipeline.core.metrics import inception_features, kid_from_features, lpips_distance
from pipeline.data.dataset import patch_pairs
from pipeline.model.nets.generator import E2GANGenerator
from pipeline.model.nets.pix2pix import ResnetGenerator
from pipeline.model.nets.tone import save_tone, with_tone
from pipeline.orchestrate.dvc import code_hash, stage_paths

SCALES = {
    # fine-tunes (full_ft, adapter, uniform, random) run finetune_lora.train.steps unless `lora_steps` is set, on
    # finetune_lora.patch windows, scored on val every `eval_every` steps; the models from scratch (pix2pix,
    # e2gan_scratch) run `scratch_steps` on `scratch_patch` windows of all training pairs (0 = whole crops), scored
    # every `scratch_eval_every` steps
    "default": {
        "scratch_steps": 240, "scratch_patch": 96, "scratch_eval_every": 60, "lora_steps": 0, "batch": 4,
        "eval_every": 30, "val_limit": 48,
    },
    "smoke": {
        "scratch_steps": 4, "scratch_patch": 0, "scratch_eval_every": 2, "lora_steps": 4, "batch": 2, "eval_every": 2,
        "val_limit": 8,
    },
}  # fmt: skip
# the default with three times the models-from-scratch budget: where pix2pix's val-best was the end of its 240 steps,
# is it still improving, and what is its time to val-best then? (the fine-tunes' keys are the default's: --reuse)
SCALES["long_scratch"] = {**SCALES["default"], "scratch_steps": 720}
# the default with four times the fine-tunes' steps (scored every 60): does a longer fine-tune close what the default's
# 150 steps leave (cartoon's KID against the base, watercolor against the generator from scratch)? The models from
# scratch keep the default's keys (--reuse takes them over)
SCALES["long_finetune"] = {**SCALES["default"], "lora_steps": 600, "eval_every": 60}
LATER_DEFAULTS = {"lr_decay": "constant", "precision": "fp32"}  # TrainConfig settings newer than the first runs
DEFAULT_METHODS = ("adapter", "full_ft", "searched", "uniform_all", "uniform", "pix2pix", "e2gan_scratch")


def concept_data(name: str, params, val_limit: int) -> ConceptBench:
    """The concept's pipeline outputs when it is a target in params.yaml, else pairs made here for a pool filter."""
    if name in params.concepts:
        return ConceptBench.load(name, val_limit, params, test_limit=0)
    from pipeline.data.pairs import FILTER_PROMPTS, filter_concept, generate_pairs
    from pipeline.data.prompts import write_prompts
    from pipeline.data.teachers import build_teacher
    from pipeline.orchestrate.dvc import code_hash

    if name not in FILTER_PROMPTS:
        raise SystemExit(f"{name!r} is neither a concept in params.yaml nor a filter ({', '.join(FILTER_PROMPTS)})")
    base_paths = stage_paths("finetune_lora", next(iter(params.concepts)))
    root = Path("data/.work/concept_bench") / name
    prompts, pairs = root / "prompts", root / "pairs"
    cc = filter_concept(name)
    if not (pairs / "metadata.jsonl").is_file():
        write_prompts(name, cc, params.expand_prompts, prompts)
        instr = json.loads((prompts / "prompts.json").read_text())
        generate_pairs(
            name,
            cc,
            params.generate_pairs,
            build_teacher(cc.teacher),
            stage_paths("generate_pairs", next(iter(params.concepts)))["sources"],
            instr,
            pairs,
            root / "work",
            code_hash("generate_pairs"),
        )
    return ConceptBench.from_folders(
        name, base_paths["base"], pairs, prompts, base_paths["ranks"], val_limit, params, test_limit=0
    )


def job_spec(method: str, cb: ConceptBench, draw: int | None, s) -> dict | None:
    """The peft spec a method trains (None: a whole generator trains)."""
    if method in ("pix2pix", "e2gan_scratch", "full_ft"):
        return None
    if method in ("adapter", "lora", "from_base"):
        return cb.spec
    if method == "searched":
        return cb.searched
    every = dict(cb.base.named_modules())
    shipped = spec_ranks(cb.spec)
    target = count({n: every[n] for n in shipped}, shipped)  # the shipped adapter's LoRA parameters
    if method == "random":  # random ranks on the shipped adapter's layers, at its parameter count
        modules = {n: every[n] for n in shipped}
        return spec_for(random_ranks(modules, target, s.ranks, 1000 + draw), s)
    layers = spec_ranks(cb.searched) if method == "uniform" else adaptable_layers(cb.base)
    modules = {n: every[n] for n in layers}
    r = min(s.ranks, key=lambda r: abs(count(modules, {n: r for n in modules}) - target))
    return spec_for({n: r for n in modules}, s)


def job_config(cb: ConceptBench, method: str, seed: int, draw: int | None, scale: dict, params) -> dict:
    """Everything that decides what a job trains and how it is scored; its `key` identifies the run, so two
    methods that train the same thing share one run and a run made on other data, base or settings is not
    reused."""
    fcfg = params.finetune_lora
    scratch = method in ("pix2pix", "e2gan_scratch")
    spec = job_spec(method, cb, draw, params.search_ranks)
    adapter = spec is not None
    # adapters train as finetune_lora does (train_as), except "lora": the shipped spec trained as LoRA factors
    full_rank = fcfg.train_as == "full_rank"
    truncated = adapter and method != "lora" and full_rank
    steps = scale["scratch_steps"] if scratch else (scale["lora_steps"] or fcfg.train.steps)
    # under "full_rank" the full fine-tune is the very training the adapters are read from: one rate, one family
    shares_training = truncated or (method == "full_ft" and full_rank)
    if shares_training:
        lr = fcfg.full_rank_lr_g
    else:
        lr = fcfg.train.lr_g if adapter else 2e-4
    cfg = fcfg.train.model_copy(update={"batch_size": scale["batch"], "ema": 0.0, "seed": seed, "lr_g": lr})
    subset = list(range(len(cb.pairs.inputs))) if scratch else cb.subset(fcfg.subset)
    what = {
        "kind": "lora" if adapter else method if scratch else "full_ft",
        "spec": spec,
        # settings added later are in the key only when set away from their default (older runs keep their keys)
        "train": cfg.model_dump(exclude={k for k, v in LATER_DEFAULTS.items() if getattr(cfg, k) == v}),
        "steps": steps,
        "subset": hashlib.sha256(json.dumps(subset).encode()).hexdigest()[:16],
        "loraplus": fcfg.loraplus_ratio if adapter else 1.0,
        "store": fcfg.store if adapter else "float32",
        "eval_every": scale["scratch_eval_every"] if scratch else scale["eval_every"],
        "val_limit": scale["val_limit"],
        "data": data_key(cb),
    }
    if truncated:  # a full-rank fine-tune read through the spec's truncated adapter (finetune_lora's full_rank)
        what.update(kind="full_rank_truncated", loraplus=1.0)
    # where that training starts ("from_base": the base as it is; runs from the base keep their keys)
    start = 1.0 if method == "from_base" else fcfg.start_head_scale
    if shares_training and start != 1.0:
        what["start_head_scale"] = start
    # finetune_lora's output curve trains beside the full-rank fine-tune (runs without one keep their keys)
    tone = {"knots": fcfg.tone_knots, "lr": fcfg.tone_lr} if shares_training and fcfg.tone_knots else None
    if tone and fcfg.tone_window:  # its outline gate (runs without one keep their keys)
        tone["window"] = fcfg.tone_window
    if tone:
        what["tone"] = tone
    # finetune_lora's training windows, or the scale's for the models from scratch (runs on whole crops keep
    # their keys)
    patch = scale.get("scratch_patch", 0) if scratch else fcfg.patch if (adapter or shares_training) else 0
    if patch:
        what["patch"] = patch
    # full-rank jobs of one concept and seed share one training (their specs only decide what is read from it),
    # and under "full_rank" the full fine-tune is that training itself, read untruncated
    shared = {**what, "spec": None, "kind": "full_rank_truncated", "loraplus": 1.0, "store": fcfg.store}
    family = hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:16]
    key = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "key": key,
        "spec": spec,
        "cfg": cfg,
        "steps": steps,
        "subset": subset,
        "scratch": scratch,
        "eval_every": what["eval_every"],
        "family": family if shares_training else None,
        "start_head_scale": start if shares_training else 1.0,
        "patch": patch,
        "tone": tone,
    }


@functools.lru_cache(maxsize=16)
def _sha(path: str) -> str:
    return sha256_file(Path(path))


def data_key(cb: ConceptBench) -> str:
    """The base's weights and the concept's pairs: what every run and reference of the concept was made on."""
    pairs = cb.pairs_dir / "metadata.jsonl" if cb.pairs_dir else None
    parts = [_sha(str(cb.base_dir / "generator.safetensors")), _sha(str(pairs)) if pairs and pairs.is_file() else ""]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def build(
    method: str, cb: ConceptBench, seed: int, spec: dict | None, head_scale: float = 1.0, tone: dict | None = None
) -> tuple[torch.nn.Module, bool]:
    """(the model to train, whether it is an adapter); seeded so a rerun builds the same initial weights. A
    fine-tune of the whole base starts with its output layer scaled by `head_scale` (finetune_lora's start) and,
    with a job's `tone`, an identity output curve of its knots (and outline gate)."""
    from pipeline.adapt.lora import scaled_head_start

    torch.manual_seed(seed)
    if method == "pix2pix":
        return ResnetGenerator(ngf=64), False
    if method == "e2gan_scratch":
        return E2GANGenerator(cb.base.cfg), False
    if spec is None:
        G = scaled_head_start(cb.base, head_scale).requires_grad_(True)
        return (with_tone(G, tone["knots"], tone.get("window", 0)) if tone else G), False
    return add_lora_spec(copy.deepcopy(cb.base), spec), True


def stored_bytes(G, adapter: bool, dtype: str = "float32") -> int:
    """What one concept costs on disk: the adapter's weights files as finetune_lora writes them, or the whole
    generator as one fp32 safetensors file (with its output curve, if any)."""
    import tempfile

    from safetensors.torch import save_file

    from pipeline.adapt.lora import save_adapter

    with tempfile.TemporaryDirectory() as tmp:
        if adapter:  # the LoRA file and the output curve's, as save_adapter_folder counts them
            save_adapter(G, Path(tmp), dtype)
            return (Path(tmp) / "adapter_model.safetensors").stat().st_size + save_tone(G.base_model.model, Path(tmp))
        path = Path(tmp) / "g.safetensors"
        save_file({k: v.contiguous() for k, v in G.state_dict().items()}, str(path))
        return path.stat().st_size


def run_one(cb: ConceptBench, method: str, seed: int, draw: int | None, job: dict, params) -> dict:
    fcfg = params.finetune_lora
    tone = job.get("tone")  # a full fine-tune trained alone as the family would train it
    G, adapter = build(method, cb, seed, job["spec"], job["start_head_scale"], tone)
    cfg, steps = job["cfg"], job["steps"]
    data = patch_pairs(cb.pairs if job["scratch"] else cb.pairs.subset(job["subset"]), job["patch"])
    best: dict = {}

    def scores(model) -> dict:
        v = cb.lpips(model, "val")
        if not best or v < best["lpips_val"]:
            best.update(lpips_val=v, state=copy.deepcopy(model.state_dict()))
        return {"lpips_val": v}

    print(f"[{cb.name} seed {seed}] {method}{'' if draw is None else f' draw {draw}'}: {steps} steps", flush=True)
    curve = train_curve(
        G,
        data,
        cfg,
        steps,
        job["eval_every"],
        scores,
        fcfg.loraplus_ratio if adapter else 1.0,
        tone_lr=tone["lr"] if tone else None,
    )
    G.load_state_dict(best["state"])  # the val-best step, read on test
    if adapter:
        round_to(G, fcfg.store)  # scored as finetune_lora stores it
    return record(cb, job, method, seed, draw, len(data.inputs), G, adapter, curve, fcfg.store)


def record(cb: ConceptBench, job: dict, method, seed, draw, n_pairs: int, G, adapter: bool, curve, store) -> dict:
    """One finished run: G (at its val-best step) scored on every test crop, with its curve and sizes."""
    at = min(curve, key=lambda r: r["lpips_val"])
    outs = cb.outputs(G.eval(), "test")  # run_generator runs a peft model merged
    return {
        "key": job["key"],
        "concept": cb.name,
        "method": method,
        "seed": seed,
        "draw": draw,
        "steps": job["steps"],
        "pairs": n_pairs,
        "best_step": at["step"],
        "seconds_to_best": at["train_seconds"],
        "train_seconds": curve[-1]["train_seconds"],
        "trainable_params": trainable_parameters(G),
        "stored_bytes": stored_bytes(G, adapter, store),
        "lpips_test": [round(float(x), 6) for x in lpips_distance(outs, cb.test.teacher)],
        "kid_test": kid_from_features(inception_features(outs), cb.teacher_features),
        "curve": curve,
        "machine": machine(),  # seconds compare only within one machine (time_ratio_vs_pix2pix)
        **({"ranks": spec_ranks_of(G)} if adapter else {}),
    }


def run_family(cb: ConceptBench, members: list[tuple[str, int | None, dict]], seed: int, params) -> list[dict]:
    """Full-rank jobs of one concept and seed (finetune_lora's train_as "full_rank"): one fine-tune of the base,
    read through each member's truncated adapter (its spec's ranks) at every evaluation, and as itself for the
    full fine-tune (a member without a spec); each member's val-best model is scored on test. One run per
    member, as run_one writes them."""
    from pipeline.adapt.lora import truncated_adapter
    from pipeline.model.nets.generator import pooled_text

    fcfg = params.finetune_lora
    job = members[0][2]
    cond = pooled_text(cb.tokens[:1], None if cb.mask is None else cb.mask[:1])[0]
    tone = job.get("tone")
    G, _ = build("full_ft", cb, seed, None, job["start_head_scale"], tone)  # finetune_lora's start
    data = patch_pairs(cb.pairs.subset(job["subset"]), job["patch"])
    best: list[dict] = [{} for _ in members]

    def read(model, spec):
        """What the member reads from the training's current weights: the model itself or its truncated adapter
        (scored in fp32 during training and rounded as stored once chosen, as finetune_lora does)."""
        if spec is None:
            return copy.deepcopy(model).eval()
        return truncated_adapter(cb.base, model, spec, cond).eval()

    def scores(model) -> dict:
        out = {}
        for i, (_, _, jb) in enumerate(members):
            shipped = read(model, jb["spec"])
            out[f"lpips_val_{i}"] = v = cb.lpips(shipped, "val")
            if not best[i] or v < best[i]["lpips_val"]:
                best[i].update(lpips_val=v, model=shipped)
        return out

    names = ", ".join(m if d is None else f"{m} draw {d}" for m, d, _ in members)
    print(f"[{cb.name} seed {seed}] one full-rank fine-tune read as: {names}; {job['steps']} steps", flush=True)
    curve = train_curve(
        G, data, job["cfg"], job["steps"], job["eval_every"], scores, tone_lr=tone["lr"] if tone else None
    )
    runs = []
    for i, (method, draw, jb) in enumerate(members):
        mine = [
            {"step": c["step"], "train_seconds": c["train_seconds"], "lpips_val": c[f"lpips_val_{i}"]} for c in curve
        ]
        chosen, is_adapter = best[i]["model"], jb["spec"] is not None
        if is_adapter:
            round_to(chosen, fcfg.store)  # scored as finetune_lora stores it
        store = fcfg.store if is_adapter else "float32"
        run = record(cb, jb, method, seed, draw, len(data.inputs), chosen, is_adapter, mine, store)
        runs.append({**run, "train_as": "full_rank", "family": jb["family"]})
    return runs


def spec_ranks_of(G) -> dict[str, int]:
    cfg = G.peft_config["default"]
    pattern = {k.strip("^$"): v for k, v in (cfg.rank_pattern or {}).items()}
    return {t: pattern.get(t, cfg.r) for t in sorted(cfg.target_modules)}


def references(cb: ConceptBench) -> dict:
    """The untrained references on test: the identity (input passed through) and the base without adapter."""
    base_out = cb.outputs(cb.base, "test")
    return {
        "data": data_key(cb),
        "photos": list(cb.test.photos),
        "identity": {
            "lpips_test": [round(float(x), 6) for x in lpips_distance(cb.test.inputs, cb.test.teacher)],
            "kid_test": cb.kid(),
        },
        "base": {
            "lpips_test": [round(float(x), 6) for x in lpips_distance(base_out, cb.test.teacher)],
            "kid_test": kid_from_features(inception_features(base_out), cb.teacher_features),
        },
        "train_pairs": len(cb.pairs.inputs),
        "val_pairs": len(cb.val.inputs),
        "test_pairs": len(cb.test.inputs),
    }


# ----------------------------------------------------------------------------- the run


def plan(concepts: list[str], seeds: list[int], n_random: int) -> list[tuple[str, str, int, int | None]]:
    """(concept, method, seed, draw). First every seed's fine-tunes of the base for every concept (adapter, full
    fine-tune, the other allocations and the seed's random draws: one full-rank training per concept and seed
    under train_as "full_rank"), so that a partial run already gives the gap closed over concepts and seeds;
    then, seed by seed, pix2pix, the generator from scratch and LoRA trained directly for every concept."""
    jobs = []
    for s in seeds:
        for c in concepts:
            jobs += [(c, m, s, None) for m in FAMILY]
            jobs += [(c, "random", s, d) for d in range(n_random) if d % len(seeds) == seeds.index(s)]
    for s in seeds:
        jobs += [(c, m, s, None) for m in METHODS if m not in FAMILY for c in concepts]
    return jobs


def reusable(runs: list[dict], keys: set[str], other: dict, name: str) -> list[dict]:
    """The runs of another results file (`other`, called `name`) that a job of this plan has (the same key: the
    same spec, settings, data subset, base and pairs) and `runs` lacks, each marked with where it came from."""
    have = {r.get("key") for r in runs}
    taken, seen = [], set()
    for r in other.get("runs", []):
        if r.get("key") in keys - have - seen:
            taken.append({**r, "reused_from": name})
            seen.add(r["key"])
    return taken


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concepts", default="watercolor,cartoon,winter,pop_art")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--random", type=int, default=5, help="random allocations per concept")
    ap.add_argument(
        "--methods",
        default=",".join((*DEFAULT_METHODS, "random")),
        help="the methods to plan (the adapter and the full fine-tune always run: every figure is relative to them; "
        f"also: {', '.join(m for m in METHODS if m not in DEFAULT_METHODS)})",
    )
    ap.add_argument(
        "--reuse",
        type=Path,
        action="append",
        default=[],
        help="another results file whose runs this plan also has (the same key) are taken over instead of trained",
    )
    ap.add_argument("--scale", choices=sorted(SCALES), default="default")
    ap.add_argument("--out", type=Path, default=RESULTS / "concept_bench.json")
    ap.add_argument("--fresh", action="store_true", help="discard every finished run and start over")
    ap.add_argument(
        "--max-runs",
        type=int,
        default=None,
        help="train at most this many runs, then stop (0: only rewrite the summary)",
    )
    ap.add_argument("--summary-only", action="store_true", help="only rewrite the summary, table and plot")
    args = ap.parse_args()
    if args.summary_only:
        result = json.loads(args.out.read_text())
        write(result, args.out)
        print(markdown(result))
        return
    params, scale = load_params(), SCALES[args.scale]
    methods = {"adapter", "full_ft", *(m.strip() for m in args.methods.split(",") if m.strip())}
    unknown = methods - {*METHODS, "random"}
    if unknown:
        raise SystemExit(
            f"--methods: unknown {', '.join(sorted(unknown))}; choose from {', '.join((*METHODS, 'random'))}"
        )
    concepts = [c.strip() for c in args.concepts.split(",") if c.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    cbs = {c: concept_data(c, params, scale["val_limit"]) for c in concepts}
    result = json.loads(args.out.read_text()) if args.out.is_file() and not args.fresh else {}
    result.setdefault("runs", [])
    result.pop("fingerprint", None)
    result.update(
        {
            "scale": args.scale,
            "settings": scale,
            "split": "test",
            "concepts": concepts,
            "seeds": seeds,
            "random_draws": args.random,
            "resolution": params.data.image_size,
            "threads": torch.get_num_threads(),
            "device": str(__import__("pipeline.model.train", fromlist=["train_device"]).train_device()),
        }
    )
    refs = result.setdefault("references", {})
    for c, cb in cbs.items():
        if refs.get(c, {}).get("data") != data_key(cb):  # computed once per base and pairs
            refs[c] = references(cb)
    jobs = {
        job_id(*j): job_config(cbs[j[0]], j[1], j[2], j[3], scale, params) for j in plan(concepts, seeds, args.random)
    }
    result["jobs"] = {j: cfg["key"] for j, cfg in jobs.items()}
    keys = set(result["jobs"].values())
    aside = result.pop("set_aside", [])
    result["runs"] += [r for r in aside if r.get("key") in keys]  # a setting switched back: its runs count again
    stale = [r for r in result["runs"] if r.get("key") not in keys]
    if stale:  # made on another base, other pairs or settings: never mixed into the figures, kept aside
        print(f"{len(stale)} runs in {args.out} match no job of this plan (other base, data or settings): set aside")
        result["runs"] = [r for r in result["runs"] if r.get("key") in keys]
    for other in args.reuse:  # e.g. a focused benchmark's runs of the same design, base and data
        taken = reusable(result["runs"], keys, json.loads(other.read_text()), other.name)
        result["runs"] += taken
        print(f"{len(taken)} runs taken over from {other}", flush=True)
    kept = {r.get("key") for r in result["runs"]}
    result["set_aside"] = [r for r in [*aside, *stale] if r.get("key") not in kept]
    done = {r["key"] for r in result["runs"]}
    # every job of the plan keeps its runs; only the chosen methods train
    todo = [(j, cfg) for j, cfg in jobs.items() if cfg["key"] not in done and j.split("|")[1] in methods]
    print(f"{len(jobs)} jobs, {len(keys)} distinct runs, {len({c['key'] for _, c in todo})} to train", flush=True)
    t0 = time.perf_counter()
    trained = 0
    training_code, commit = code_hash("finetune_lora")[:16], code_version()
    for j, cfg in todo:
        if cfg["key"] in done:  # another method of this plan trains the same thing
            continue
        if args.max_runs is not None and trained >= args.max_runs:
            print(f"stopping after {trained} runs (--max-runs); rerun to go on", flush=True)
            break
        trained += 1
        c, m, seed, draw = j.split("|")
        n_before, t_job = len(result["runs"]), time.perf_counter()
        if cfg["family"] is None:
            result["runs"].append(run_one(cbs[c], m, int(seed), None if draw == "-" else int(draw), cfg, params))
        else:  # every unfinished job trained by the same full-rank fine-tune, read through its own spec
            members, keys_in = [], set()
            for j2, cfg2 in todo:
                if cfg2["family"] == cfg["family"] and cfg2["key"] not in done | keys_in:
                    _, m2, _, d2 = j2.split("|")
                    members.append((m2, None if d2 == "-" else int(d2), cfg2))
                    keys_in.add(cfg2["key"])
            result["runs"] += run_family(cbs[c], members, int(seed), params)
            done |= keys_in
        for r in result["runs"][n_before:]:  # what the job cost in all, evaluations included (budgeting)
            r["job_wall_seconds"] = round(time.perf_counter() - t_job, 1)
            r["code"] = {"training": training_code, "commit": commit}  # what trained it (not in its key)
        done.add(cfg["key"])
        result["wall_seconds"] = round(result.get("wall_seconds", 0) + time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        write(result, args.out)  # after every run: a killed benchmark keeps what it has
    write(result, args.out)
    print(markdown(result))


def write(result: dict, out: Path) -> None:
    """The results file with a fresh summary, its markdown table and its plot, each written atomically."""
    result["summary"] = summarise(result)
    atomic_write_json(out, result)
    atomic_write_text(out.with_suffix(".md"), markdown(result))
    plot(result, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
