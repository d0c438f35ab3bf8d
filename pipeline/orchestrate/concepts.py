"""The concepts in params.yaml: add, update, list and remove them the way the CLI and the Prefect flow do.

A change is validated as a whole params.yaml before anything is written, written atomically (temp file and
rename; only the concept's own lines change) and made under a file lock beside params.yaml, so several runs that add concepts at
once all land and a bad definition leaves the file byte-identical.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from pipeline.config import parse_params, read_params
from pipeline.core.errors import ConfigError
from pipeline.core.io import atomic_write_text
from pipeline.core.slug import check_slug

LOCK_TIMEOUT_S = 120


def lock(params_path: Path) -> FileLock:
    """The lock every params.yaml edit holds (a `.lock` file beside it, ignored by git)."""
    return FileLock(str(params_path) + ".lock", timeout=LOCK_TIMEOUT_S)


def teacher_from_spec(spec: str, **settings: Any) -> dict[str, Any]:
    """A teacher block from the CLI's short form, plus optional settings of that kind:

    filters:OP[:STRENGTH]     an OpenCV/PIL edit (`e2gan concept add --help` lists the ops)
    diffusers:MODEL           a diffusers editor: a hub id or a local folder (steps, guidance_scale, ...)
    pairs:SOURCE              pairs made elsewhere: input/ + edited/, a metadata.jsonl, or a dataset id
    """
    kind, _, rest = spec.partition(":")
    settings = {k: v for k, v in settings.items() if v is not None}
    if kind == "filters":
        op, _, strength = rest.partition(":")
        if not op:
            raise ConfigError(f"--teacher {spec!r}: give the filter, e.g. filters:watercolor or filters:watercolor:0.8")
        block: dict[str, Any] = {"kind": "filters", "op": op}
        if strength:
            try:
                block["strength"] = float(strength)
            except ValueError:
                raise ConfigError(
                    f"--teacher {spec!r}: strength {strength!r} is not a number; e.g. filters:{op}:0.8"
                ) from None
        return {**block, **settings}
    if kind == "diffusers":
        if not rest:
            raise ConfigError(
                f"--teacher {spec!r}: give the model, e.g. diffusers:timbrooks/instruct-pix2pix or a local folder"
            )
        return {"kind": "diffusers", "model": rest, **settings}
    raise ConfigError(
        f"--teacher {spec!r}: unknown teacher kind {kind!r}; use filters:OP[:STRENGTH] or diffusers:MODEL"
    )


def _minimal(concept) -> dict[str, Any]:
    """A validated concept as params.yaml writes it: the prompt and the teacher's non-default settings."""
    t = concept.teacher
    keep = {
        "kind": t.kind,
        **({"model": t.model} if t.kind == "diffusers" else {}),
    }  # filters' op, pairs' source: required
    return {"prompt": concept.prompt, "teacher": {**keep, **t.model_dump(exclude_defaults=True)}}


def validate(name: str, prompt: str, teacher: dict[str, Any], params_path: Path = Path("params.yaml")):
    """The concept as it would be in params.yaml (a ConceptConfig), or a ConfigError of one line per problem,
    naming the field and the fix."""
    check_slug(name)
    doc = _read(params_path)
    concepts = dict(doc.get("concepts") or {})
    concepts[name] = {"prompt": prompt, "teacher": teacher}
    return parse_params({**doc, "concepts": concepts}, str(params_path)).concepts[name]


def _read(params_path: Path) -> dict[str, Any]:
    import yaml

    if not params_path.is_file():
        raise ConfigError(f"{params_path}: not found; run from the project root (the folder with dvc.yaml)")
    return yaml.safe_load(params_path.read_text()) or {}


@dataclass(frozen=True)
class Change:
    name: str
    action: str  # added | updated | unchanged | removed

    def line(self) -> str:
        return f"concept {self.name!r}: {self.action}"


def put(
    name: str, prompt: str, teacher: dict[str, Any], params_path: Path = Path("params.yaml"), *, replace: bool = True
) -> Change:
    """Add `name`, or bring an existing one to this definition (`replace`; otherwise an existing name with
    another definition is an error). The whole file is validated before it is written."""
    check_slug(name)
    with _locked(params_path):
        new = validate(name, prompt, teacher, params_path)
        current = read_params(params_path).concepts.get(name)
        if current == new:
            return Change(name, "unchanged")
        if current is not None and not replace:
            raise ConfigError(
                f"concept {name!r} already exists with another definition ({describe(current)}); "
                f"pick another name, or `e2gan concept remove {name}` first"
            )
        _write_concepts(params_path, name, _minimal(new))
        return Change(name, "updated" if current is not None else "added")


def remove(name: str, params_path: Path = Path("params.yaml")) -> Change:
    """Drop `name` from params.yaml (its outputs stay in the DVC cache; re-adding it restores them)."""
    check_slug(name)
    with _locked(params_path):
        known = read_params(params_path).concepts
        if name not in known:
            raise ConfigError(f"concept {name!r} is not in {params_path}; known: {', '.join(known)}")
        if len(known) == 1:
            raise ConfigError(f"{name!r} is the only concept in {params_path}; add another before removing it")
        _write_concepts(params_path, name, None)
        return Change(name, "removed")


class _locked:
    def __init__(self, params_path: Path):
        self.lock = lock(params_path)

    def __enter__(self):
        try:
            self.lock.acquire()
        except Timeout:
            raise ConfigError(
                f"{self.lock.lock_file} is held by another e2gan process for over {LOCK_TIMEOUT_S} s; "
                "wait for it, or delete the file if no e2gan process is running"
            ) from None
        return self

    def __exit__(self, *exc):
        self.lock.release()


def _entry(name: str, definition: dict[str, Any]) -> list[str]:
    import yaml

    def flow(v: Any) -> str:
        return (
            yaml.safe_dump(v, default_flow_style=True, width=10_000, allow_unicode=True)
            .strip()
            .removesuffix("...")
            .strip()
        )

    return [
        f"  {name}:\n",
        f"    prompt: {flow(definition['prompt'])}\n",
        f"    teacher: {flow(definition['teacher'])}\n",
    ]


def _concept_blocks(lines: list[str], params_path: Path) -> tuple[int, int, dict[str, tuple[int, int]]]:
    """The line range of the top-level `concepts:` block and of each concept in it (a block mapping indented
    by two spaces, as the shipped params.yaml writes it)."""
    start = next(
        (i for i, line in enumerate(lines) if line.rstrip() == "concepts:" or line.startswith("concepts: ")), None
    )
    if start is None or lines[start].split("#")[0].strip() != "concepts:":
        raise ConfigError(
            f"{params_path}: `concepts:` must be a block mapping (one concept per indented key) for e2gan to edit it; "
            "edit the file by hand or rewrite the section in that form"
        )
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].strip() and not lines[i].startswith((" ", "#"))),
        len(lines),
    )
    blocks: dict[str, tuple[int, int]] = {}
    current = None
    for i in range(start + 1, end):
        line = lines[i]
        if line.startswith("  ") and not line.startswith("   ") and line.strip() and not line.lstrip().startswith("#"):
            key = line.strip().split(":")[0]
            current = key
            blocks[key] = (i, i + 1)
        elif current is not None and (line.startswith("   ") or not line.strip()):
            if line.strip():
                blocks[current] = (blocks[current][0], i + 1)
    return start, end, blocks


def _write_concepts(params_path: Path, name: str, definition: dict[str, Any] | None) -> None:
    """Replace, append (`definition`) or drop (None) one concept's lines; every other byte of the file stays.
    The result is validated as a whole before it is written atomically."""
    import yaml

    text = params_path.read_text()
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    start, end, blocks = _concept_blocks(lines, params_path)
    new = _entry(name, definition) if definition is not None else []
    if name in blocks:
        a, b = blocks[name]
        lines[a:b] = new
    else:
        last = max((b for _, b in blocks.values()), default=start + 1)
        lines[last:last] = new
    out = "".join(lines)
    parsed = parse_params(yaml.safe_load(out), str(params_path))  # never write a file the pipeline would refuse
    if definition is not None and _minimal(parsed.concepts[name]) != definition:
        raise ConfigError(f"{params_path}: could not write concept {name!r} in place; add it by hand")
    if definition is None and name in parsed.concepts:
        raise ConfigError(f"{params_path}: could not remove concept {name!r} in place; remove it by hand")
    atomic_write_text(params_path, out)


def describe(concept) -> str:
    """The teacher in the CLI's short form (filters:watercolor:0.8, diffusers:MODEL)."""
    t = concept.teacher
    if t.kind == "filters":
        return f"filters:{t.op}" + (f":{t.strength:g}" if t.strength != 1.0 else "")
    return f"{t.kind}:{getattr(t, 'model', getattr(t, 'source', ''))}"


def headline(concept: str, root: Path = Path(".")) -> dict[str, Any] | None:
    """The concept's test-split figures from evaluate@C (None before it has run)."""
    from pipeline.orchestrate import dvc

    path = dvc.stage_paths("evaluate", concept, root)["out"]
    if not path.is_file():
        return None
    r = json.loads(path.read_text())

    def get(*keys):
        x = r
        for k in keys:
            x = x.get(k) if isinstance(x, dict) else None
        return x

    paired = get("paired", "student_minus_identity", "lpips") or {}
    return {
        "lpips_student": get("student", "lpips", "mean"),
        "lpips_identity": get("identity", "lpips", "mean"),
        "lpips_base": get("base_without_adapter", "lpips", "mean"),
        "lpips_vs_identity": paired.get("mean"),
        "lpips_vs_identity_ci95": [paired["ci95"]["low"], paired["ci95"]["high"]] if paired.get("ci95") else None,
        "kid_student": get("student", "kid", "value"),
        "kid_identity": get("identity", "kid", "value"),
        "kid_base": get("base_without_adapter", "kid", "value"),
        "test_photos": r.get("test_photos"),
        "test_pairs": r.get("test_pairs"),
    }


def listing(root: Path = Path(".")) -> list[dict[str, Any]]:
    """Every concept: its definition, whether its stages are up to date (`dvc status`), its test figures."""
    from pipeline.orchestrate import dvc

    params = read_params(root / "params.yaml")
    names = dvc.stage_names(root)
    per_concept = [s for s in dvc.PER_CONCEPT if names.get(s)]
    stale = dvc.status(None, root)
    rows = []
    for name, c in params.concepts.items():
        own = [f"{s}@{name}" for s in per_concept]
        mine = sorted(s for s in stale if s in own)
        rows.append(
            {
                "concept": name,
                "prompt": c.prompt,
                "teacher": describe(c),
                "state": "up to date" if not mine else "stale",
                "stale_stages": mine,
                "metrics": headline(name, root),
            }
        )
    return rows
