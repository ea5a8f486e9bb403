"""The tools behind `hf-flashmla SUBCOMMAND` (also `python -m hf_flashmla SUBCOMMAND`). Without a subcommand the
console script runs the main job (hf_flashmla/__main__.py).

Each subcommand is a module here with `main(argv) -> exit code`; this table is the only place that lists them, and
it imports a module only when its subcommand runs.
"""
from __future__ import annotations

import importlib

SUBCOMMANDS = {
    "evaluate": ("hf_flashmla.cli.evaluate",
                 "flash_mla against stock attention on a checkpoint and a text or token file: logits, perplexity, "
                 "greedy agreement (exit 0 pass, 1 fail, 2 usage)"),
    "check-generate": ("hf_flashmla.cli.check_generate",
                       "generate() with flash_mla against eager on a random or given model: greedy match rate, "
                       "logits error, compiled-kernel calls (exit 1 on failure)"),
}


def subcommands_help() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = ["subcommands (hf-flashmla SUBCOMMAND --help for their options):"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def run_subcommand(argv: list[str]) -> int | None:
    """Runs the subcommand named by argv[0] with the rest of argv and returns its exit code; None when argv does
    not start with a subcommand (the caller runs the main job)."""
    if not argv or argv[0] not in SUBCOMMANDS:
        return None
    module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
    return module.main(argv[1:])
