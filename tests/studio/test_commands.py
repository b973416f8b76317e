"""``volsynth studio`` on the command line: registered, documented, and light to load."""

from __future__ import annotations

import subprocess
import sys

from volsynth.cli import main


def test_studio_help_loads_without_torch_or_the_server():
    code = ("import sys; from volsynth.cli import main; main(['studio', '--help']); "
            "sys.exit(3 if {'torch', 'fastapi', 'uvicorn'} & set(sys.modules) else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    for option in ("--models", "--workdir", "--port", "--host", "--max-upload-mb", "--data"):
        assert option in result.stdout
    assert "127.0.0.1" in result.stdout


def test_studio_refuses_a_bad_upload_limit(capsys, tmp_path):
    assert main(["studio", "--workdir", str(tmp_path / "w"), "--max-upload-mb", "0"]) == 2
    assert "error: --max-upload-mb must be > 0" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_studio_refuses_a_missing_models_folder(capsys, tmp_path):
    assert main(["studio", "--workdir", str(tmp_path / "w"), "--models", str(tmp_path / "none")]) == 2
    assert "models folder not found" in capsys.readouterr().err
