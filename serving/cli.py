"""The ``quakescan`` command. Subcommands live with the package that does the
work and are imported only when run, so ``quakescan detect`` never imports
torch or Celery, and ``quakescan worker`` never imports torch."""

from __future__ import annotations

import importlib
import logging
import os
import sys

import click

# name -> "module:attribute", grouped as in the README
SUBCOMMANDS: dict[str, str] = {
    # training
    "templates": "quakescan.training.cli:templates",
    "train": "quakescan.training.cli:train_cmd",
    "evaluate": "quakescan.training.cli:evaluate_cmd",
    "export": "quakescan.training.cli:export_cmd",
    # detector
    "detect": "quakescan.detector.cli:detect_cmd",
    "plot": "quakescan.detector.cli:plot_cmd",
    "score": "quakescan.detector.score:score_cmd",
    "models": "quakescan.detector.cli:models_cmd",
    # serving
    "worker": "quakescan.serving.commands:worker_cmd",
    "feed": "quakescan.serving.commands:feed_cmd",
    "sink": "quakescan.serving.commands:sink_cmd",
    "batch": "quakescan.serving.commands:batch_group",
    "serve": "quakescan.serving.commands:serve_cmd",
}

_HELP = {
    "templates": "Build HDF5 waveform templates from continuous data and a catalog.",
    "train": "Train a ConvNetQuake or slow-earthquake model from templates.",
    "evaluate": "Precision, recall, F1, ROC-AUC and confusion matrix of a model.",
    "export": "Export a checkpoint to a self-contained ONNX model with its spec.",
    "detect": "Detect events in waveform files or an SDS archive.",
    "plot": "Plot waveforms, probabilities and detections to PNG.",
    "score": "Score detections against a reference catalog.",
    "models": "List the shipped models and show a model's spec.",
    "worker": "Run a Celery worker that turns chunks into probabilities.",
    "feed": "Stream station feeds (SeedLink, SDS, folder, replay) to the workers.",
    "sink": "Trigger on the workers' probabilities and write detections.",
    "batch": "Submit, follow and fetch batch catalog jobs.",
    "serve": "Feeder, worker and sink in one process, no Redis needed.",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            missing = exc.name or "?"
            hint = (
                "pip install 'quakescan[train]' (after torch==2.13.0)"
                if module.startswith("quakescan.training")
                else "reinstall quakescan"
            )
            raise click.ClickException(
                f"`quakescan {name}` needs the missing package {missing!r}: {hint}"
            ) from None
        return getattr(mod, attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, _HELP.get(name, "")) for name in SUBCOMMANDS]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="quakescan")
def cli(verbose: int) -> None:
    """quakescan: seismic event detection with CNNs, from training to a Celery service."""
    level = os.environ.get("QUAKESCAN_LOG_LEVEL") or (
        "DEBUG" if verbose > 1 else "INFO" if verbose else "WARNING"
    )
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main() -> None:
    cli(prog_name="quakescan")


if __name__ == "__main__":
    main()
