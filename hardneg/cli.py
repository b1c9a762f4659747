"""The one hardneg CLI (typer). Logging is configured only here; heavy imports happen inside each command so
``hardneg --help`` stays fast. A :class:`HardnegError` prints its message (no traceback) and exits 1."""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from hardneg.errors import HardnegError

app = typer.Typer(
    name="hardneg",
    help="Hard-negative mining -> cross-encoder reranker -> ONNX -> KServe, as a Kubeflow pipeline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="params.yaml (default: ./params.yaml if present)")]


class _State:
    config: Path | None = None
    params: dict[str, Any] | None = None


state = _State()


@app.callback()
def main(
    config: ConfigOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "urllib3", "filelock", "huggingface_hub", "sentence_transformers", "numexpr"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    state.config = config
    state.params = None


def get_params() -> dict[str, Any]:
    from hardneg.config import load_params

    if state.params is None:
        state.params = load_params(state.config)
    return state.params


def friendly_errors(fn):
    """Turn HardnegError into a one-line message and exit code 1 (never a traceback for user errors)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except HardnegError as e:
            console.print(f"[bold red]error:[/] {e}", highlight=False, markup=True)
            raise typer.Exit(1) from None

    return wrapper


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    t = Table(title=title, show_lines=False)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*[str(x) for x in r])
    out.print(t)


# --------------------------------------------------------------------------------------------------- data & lineage


@app.command("data-version")
@friendly_errors
def data_version_cmd(
    dvc_file: Annotated[Path, typer.Option(help="the DVC file to read")] = Path("data.dvc"),
) -> None:
    """Print the lineage later stages stamp into artifacts: data version (md5 in data.dvc), git commit, params hash."""
    from hardneg.lineage import current_lineage

    lin = current_lineage(get_params(), dvc_file)
    out.print_json(json.dumps(lin.to_dict()))


# ------------------------------------------------------------------------------------------------------- commands
# Each stage adds its command below, in its own section, calling functions in hardneg.<module>.
