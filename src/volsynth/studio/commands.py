"""``volsynth studio``: serve the studio page. ``volsynth.cli`` registers it::

    app.command("studio")(commands.studio)

The server (FastAPI, uvicorn, torch) is imported inside the command, so ``volsynth --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from volsynth.errors import ConfigError

console = Console(soft_wrap=True)


def studio(
    models: list[Path] = typer.Option(None, "--models", help="A folder of model folders (or one model folder) to "
                                                             "offer besides the shipped models/; repeatable."),
    data: list[Path] = typer.Option(None, "--data", help="A dataset folder whose labelled cases can be picked as "
                                                         "masks; repeatable."),
    workdir: Path = typer.Option(Path("studio-output"), help="Folder for uploads and results (the server writes "
                                                             "nowhere else)."),
    port: int = typer.Option(8765, help="Port to listen on."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; other machines can reach the studio only when "
                                               "this is given (e.g. 0.0.0.0)."),
    max_upload_mb: float = typer.Option(512, help="Largest mask upload, in MB."),
) -> None:
    """Serve the studio: pick a model, draw or upload a mask, write a report, generate, view in 3D."""
    import uvicorn

    from volsynth.studio.catalog import SHIPPED_MODELS
    from volsynth.studio.server import VIEWER, VIEWER_HINT, create_app

    if max_upload_mb <= 0:
        raise ConfigError(None, f"--max-upload-mb must be > 0, got {max_upload_mb}")
    folders = ([SHIPPED_MODELS] if SHIPPED_MODELS.is_dir() else []) + list(models or [])
    if not folders:
        raise ConfigError(None, "no models to offer", "give --models DIR")
    app = create_app(workdir, folders, list(data or []), max_upload_mb)
    if not VIEWER.is_file():
        console.print(f"warning: {VIEWER_HINT}", markup=False, highlight=False)
    console.print(f"volsynth studio: http://{host}:{port}/  (workdir {workdir}; Ctrl-C stops it)", markup=False,
                  highlight=False)
    uvicorn.run(app, host=host, port=port, log_level="warning")
