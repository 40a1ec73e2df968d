"""The committed stubs are what scripts/genproto makes from protos/."""

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_committed_stubs_match_protos(tmp_path):
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "genproto"), str(tmp_path)],
        check=True, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}, cwd=ROOT,
    )
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert generated, "genproto produced nothing"
    for rel in generated:
        assert (ROOT / rel).exists(), f"{rel} is generated but not committed"
        assert filecmp.cmp(tmp_path / rel, ROOT / rel, shallow=False), f"{rel} differs: run scripts/genproto"
