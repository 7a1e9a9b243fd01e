"""The client never imports torch, nor `model` (which is the torch side of the project)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_client_modules_import_without_torch_or_model():
    code = (
        "import json, sys\n"
        "import client, client.app, client.controls, client.net, client.render, client.replay\n"
        "import client.assets\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'model', 'training', 'fastapi'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={"SDL_VIDEODRIVER": "dummy", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == [], f"the client imported {loaded}"
