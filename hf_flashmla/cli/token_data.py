"""Token ids for `hf-flashmla evaluate`: read from a token file or a text file (checkpoint tokenizer), cut into windows.

Token files: `.txt` (integers separated by whitespace or commas; one document per line or all on one),
`.json` (a list of ints or a list of lists), `.pt` (a 1-D/2-D integer tensor, or a list of them / of ints).
Documents are concatenated into one stream and cut into equal windows. Errors raise DataError, which
the command reports as a usage error (exit code 2).
"""
from __future__ import annotations

import json
import os

import torch

TOKEN_FILE_ERRORS = (ValueError, RuntimeError, OSError)  # of a .txt / .json (UnicodeDecodeError: a ValueError)


class DataError(ValueError):
    pass


def read_token_file(path: str) -> list[int]:
    if not os.path.isfile(path):
        raise DataError(f"--tokens: no such file: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".pt":
        return _flatten(_load_pt(path), path)
    try:
        if ext == ".json":
            with open(path) as f:
                data = json.load(f)
        else:
            with open(path) as f:
                data = [int(tok) for tok in f.read().replace(",", " ").split()]
    except TOKEN_FILE_ERRORS as error:
        raise DataError(f"--tokens: cannot read {path}: {error}") from error
    return _flatten(data, path)


def _load_pt(path: str):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (torch.load of foreign bytes raises UnpicklingError, EOFError, KeyError...)
        raise DataError(f"--tokens: cannot read {path}: expected a torch.save file of integer token ids, got "
                        f"{_first_sentence(error)}") from error


def _first_sentence(error: BaseException) -> str:
    """`Type: first sentence of the message`: torch.load's run over lines, with advice for Python callers."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0].split('. ')[0]}" if lines else type(error).__name__


def _flatten(data, path) -> list[int]:
    if isinstance(data, torch.Tensor):
        if data.is_floating_point() or data.is_complex() or data.dtype == torch.bool:
            raise DataError(f"--tokens: {path} holds a {data.dtype} tensor; expected integer token ids")
        return [int(v) for v in data.reshape(-1).tolist()]
    if isinstance(data, int) and not isinstance(data, bool):
        return [data]
    if isinstance(data, (list, tuple)):
        out = []
        for item in data:
            out.extend(_flatten(item, path))
        return out
    raise DataError(f"--tokens: {path} holds {type(data).__name__}; expected integer token ids")


def load_tokenizer(checkpoint: str):
    """The checkpoint's tokenizer, or None when it has no tokenizer files."""
    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any(os.path.exists(os.path.join(checkpoint, n)) for n in names):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(checkpoint)


def read_text_file(path: str, tokenizer) -> list[int]:
    if not os.path.isfile(path):
        raise DataError(f"--text: no such file: {path}")
    if tokenizer is None:
        raise DataError("--text: the checkpoint has no tokenizer files; tokenize yourself and pass --tokens")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (UnicodeDecodeError, OSError) as error:
        raise DataError(f"--text: cannot read {path}: expected UTF-8 text, got {error}") from error
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def random_tokens(count: int, vocab_size: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab_size, (count,), generator=generator).tolist()


def windows(tokens: list[int], seq_len: int, max_windows: int, vocab_size: int) -> torch.Tensor:
    """[n, seq_len] int64 of consecutive windows; checks the ids against the vocabulary."""
    if seq_len < 2:
        raise DataError(f"--seq-len: at least 2, got {seq_len}")
    bad = [t for t in tokens if t < 0 or t >= vocab_size]
    if bad:
        raise DataError(f"token ids: {len(bad)} outside [0, {vocab_size}) (e.g. {bad[:3]}); wrong tokenizer?")
    n = min(len(tokens) // seq_len, max_windows)
    if n < 1:
        raise DataError(f"data: {len(tokens)} tokens, fewer than one window of --seq-len {seq_len}")
    return torch.tensor(tokens[: n * seq_len], dtype=torch.long).view(n, seq_len)
