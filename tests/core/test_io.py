"""Work folders: one key per inputs, stale keys removed, kept for a resume when the work fails."""

from __future__ import annotations

import pytest

from pipeline.core.io import fingerprint, work_folder


def test_work_folder_resumes_same_inputs_and_drops_others(tmp_path):
    root = tmp_path / "work"
    with pytest.raises(RuntimeError):
        with work_folder(root, "winter", "code-a", {"steps": 10}) as w:
            (w / "last.pt").write_text("step 5")
            raise RuntimeError("killed")
    assert (w / "last.pt").is_file()  # kept for the resume
    other = root / f"cartoon-{fingerprint('x')}"
    other.mkdir()
    with work_folder(root, "winter", "code-a", {"steps": 10}) as again:
        assert again == w and (again / "last.pt").read_text() == "step 5"  # the same inputs resume
    assert not w.exists() and other.is_dir()  # finished: removed; another prefix's folder untouched
    with pytest.raises(RuntimeError):
        with work_folder(root, "winter", "code-a", {"steps": 10}) as w:
            (w / "last.pt").write_text("old code's checkpoint")
            raise RuntimeError("killed")
    with work_folder(root, "winter", "code-b", {"steps": 10}) as new:  # the code changed
        assert new != w and not w.exists() and not (new / "last.pt").exists()


def test_only_the_owner_removes(tmp_path):
    stale = tmp_path / f"base-{fingerprint('old')}"
    stale.mkdir(parents=True)
    with work_folder(tmp_path, "base", "new", owner=False) as w:
        assert stale.is_dir()
    assert w.is_dir() and stale.is_dir()
