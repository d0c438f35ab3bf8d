"""Prompt expansion: deterministic, distinct instructions; embeddings written with the configured encoder."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from pipeline.data.prompts import ExpandPromptsConfig, expand_prompt, write_prompts
from pipeline.data.teachers import ConceptConfig


def test_expansion_is_deterministic_distinct_and_keeps_the_prompt():
    a = expand_prompt("make it a watercolor painting", 8, seed=0)
    assert a == expand_prompt("make it a watercolor painting", 8, seed=0)
    assert a[0] == "make it a watercolor painting" and len(set(a)) == 8
    assert all("watercolor painting" in p for p in a)
    assert any(p.startswith(("turn it into", "transform it into", "render it as", "convert it to")) for p in a)
    assert a != expand_prompt("make it a watercolor painting", 8, seed=1)


def test_unknown_phrasing_still_expands_with_templates():
    out = expand_prompt("Van Gogh style", 5)
    assert out[0] == "Van Gogh style" and len(set(out)) == 5


@pytest.mark.slow
def test_write_prompts_embeddings(tmp_path):
    concept = ConceptConfig(prompt="make it winter with falling snow", teacher={"kind": "filters", "op": "winter"})
    rec = write_prompts("winter", concept, ExpandPromptsConfig(n_prompts=4), tmp_path / "p")
    saved = json.loads((tmp_path / "p" / "prompts.json").read_text())
    assert saved == rec and len(saved["instructions"]) == 4 and saved["negative_prompt"]
    t = load_file(str(tmp_path / "p" / "embeddings.safetensors"))
    assert t["pooled"].shape == (4, 384) and t["tokens"].shape[0] == 4 and t["mask"].sum() > 4
    sims = t["pooled"] @ t["pooled"].T  # paraphrases of one edit are close in MiniLM space
    assert float(sims.min()) > 0.6


@pytest.mark.slow
def test_later_stages_read_the_stored_encodings_and_only_while_they_match(tmp_path, monkeypatch):
    """concept_condition and load_pair_data take expand_prompts' stored encodings (no text model loads), equal to
    encoding afresh; an edited prompts.json or another encoder is encoded afresh, never served stale."""
    import torch

    from pipeline.data import text
    from pipeline.data.dataset import concept_condition

    concept = ConceptConfig(prompt="make it winter with falling snow", teacher={"kind": "filters", "op": "winter"})
    write_prompts("winter", concept, ExpandPromptsConfig(n_prompts=4), tmp_path / "p")
    pfile = tmp_path / "p" / "prompts.json"
    fresh = text.text_encoder("minilm").encode(json.loads(pfile.read_text())["instructions"][:1])

    loads = []
    real = text.text_encoder
    monkeypatch.setattr(text, "text_encoder", lambda name="minilm": loads.append(name) or real(name))
    tokens, mask = concept_condition(pfile, "minilm")
    assert loads == [] and torch.equal(tokens, fresh.tokens) and torch.equal(mask, fresh.mask)

    record = json.loads(pfile.read_text())
    record["instructions"][0] = "make it a sunny summer day"  # edited by hand after expand_prompts
    pfile.write_text(json.dumps(record))
    tokens, _ = concept_condition(pfile, "minilm")
    assert loads == ["minilm"]
    assert torch.equal(tokens, real("minilm").encode(["make it a sunny summer day"]).tokens)
    assert text.stored_items(tmp_path / "p" / "embeddings.safetensors", "openai/clip-vit-base-patch32") == {}
