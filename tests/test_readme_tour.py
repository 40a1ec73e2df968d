"""The README's tour runs as printed: every command of its ```console tour blocks, in
order, in an empty folder, with the project's venv on PATH; every command must succeed and
the answers the tour talks about must come back."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
VENV_BIN = Path(sys.executable).parent


def tour_commands(text: str) -> list[str]:
    """The commands of the tour blocks: each `$ ` line, with the here-document lines that
    follow a `<<'EOF'` up to its EOF line; the rest of a block is sample output."""
    commands: list[str] = []
    for block in re.findall(r"^```console tour\n(.*?)^```", text, flags=re.S | re.M):
        lines = block.splitlines()
        i = 0
        while i < len(lines):
            line = lines[i]
            i += 1
            if not line.startswith("$ "):
                continue
            command = [line[2:]]
            heredoc = re.search(r"<<'(\w+)'", line)
            if heredoc:
                while i < len(lines):
                    command.append(lines[i])
                    i += 1
                    if lines[i - 1] == heredoc.group(1):
                        break
            commands.append("\n".join(command))
    return commands


def test_the_tour_blocks_are_found():
    commands = tour_commands(README.read_text())
    assert commands[0].startswith("tsplit up") and commands[-1] == "tsplit down"
    create = next(i for i, c in enumerate(commands) if "POST $GATEWAY/v1/deployments" in c)
    seed = next(i for i, c in enumerate(commands) if '"action": "add_challenger"' in c)
    assert create < seed  # the deployment exists before the seed's PATCH
    assert any(c.startswith("cat > traffic.yaml") and c.endswith("\nEOF") for c in commands)


@pytest.mark.timeout(300)
def test_the_readme_tour_runs_as_printed(tmp_path):
    commands = tour_commands(README.read_text())
    script = "set -euo pipefail\n" + "".join(f"echo '>>> command {n}'\n{c}\n" for n, c in enumerate(commands))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TSPLIT_")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    try:
        result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=280)
    finally:
        if (tmp_path / ".tsplit" / "stack.json").exists():
            subprocess.run([str(VENV_BIN / "tsplit"), "down", "--dir", str(tmp_path / ".tsplit")],
                           capture_output=True, timeout=60)
    out = result.stdout + result.stderr
    last = re.findall(r">>> command (\d+)", result.stdout)
    assert result.returncode == 0, f"command {last[-1] if last else '?'} failed:\n{out[-4000:]}"
    for expected in ('"deployment_id":"dep_demo"', '"action":"add_challenger"', '"cache_version":2',
                     '"error":"invalid_traffic_config"', "10% -> 20%", "shadow_mode: off -> on",
                     "dry run: nothing written", "applied: dep_demo is now version 3", "now version 4",
                     '{"status":"ok"}', "kept: etcd, controlplane, gateway, r-1, r-2", "stopped 8 processes"):
        assert expected in out, f"{expected!r} not in the tour's output:\n{out[-4000:]}"
    assert not (tmp_path / ".tsplit" / "stack.json").exists()
