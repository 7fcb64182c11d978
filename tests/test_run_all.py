"""bench/run_all.py writes the committed bench/RESULTS.md only when asked, and never with --quick figures."""

import pytest

from bench import run_all
from vqa_cp.errors import VQAError


def test_quick_figures_never_replace_the_committed_results(monkeypatch):
    def no_benchmark(*args, **kwargs):
        raise AssertionError("a refused run must not start any benchmark")

    monkeypatch.setattr(run_all.subprocess, "run", no_benchmark)
    with pytest.raises(VQAError, match="--quick figures never replace the committed bench/RESULTS.md"):
        run_all.main(["--quick", "--write"])
    with pytest.raises(VQAError, match="not both"):
        run_all.main(["--write", "--output", "x.md"])


def test_without_write_the_report_goes_to_the_terminal_only(monkeypatch, capsys, tmp_path):
    class Done:
        returncode, stdout, stderr = 0, "figures", ""

    monkeypatch.setattr(run_all.subprocess, "run", lambda *args, **kwargs: Done())
    monkeypatch.setattr(run_all, "ROOT", tmp_path)  # a write would land in tmp_path/bench/RESULTS.md
    assert run_all.main(["--quick", "--only", "data"]) is None
    assert "## data" in capsys.readouterr().out
    assert not (tmp_path / "bench").exists()
