"""Calibrate a causal language model's next-token probabilities, streaming one batch at a time.

A 1-layer GPT-2 is built from a config (nothing is downloaded). Its validation batches follow the
Hugging Face convention: right-padded ``input_ids``, an ``attention_mask``, and ``labels`` equal to
the ids with -100 on padding. ``TemperatureScaler(model, shift_labels=True)`` fits T on
``logits[:, :-1]`` against ``labels[:, 1:]``, running the model over the loader once per solver
pass and holding one batch's logits at a time.

    python examples/hf_causal_lm.py            # fit and print the result
    python examples/hf_causal_lm.py --memory   # peak memory of the fit at two validation sizes

``--memory`` runs each fit in a fresh process and reports how much its peak resident memory
(``ru_maxrss``) grew during the fit, for the streamed fit and for holding every shifted logit in
memory first, at 32 and 128 validation sequences (vocabulary 8192, 64 tokens, batches of 8).
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from torchcal import TemperatureScaler


def tiny_gpt2(vocab: int) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=vocab,
        n_positions=64,
        n_embd=32,
        n_layer=1,
        n_head=2,
        initializer_range=0.3,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(config).eval()


def validation_batches(
    model: GPT2LMHeadModel, n_sequences: int, length: int = 64, batch_size: int = 8
) -> list[dict[str, torch.Tensor]]:
    """Sequences sampled from the model at temperature 1.5, right-padded per batch."""
    generator = torch.Generator().manual_seed(1)
    start = torch.randint(1, model.config.vocab_size, (n_sequences, 1), generator=generator)
    with torch.no_grad():
        ids = model.generate(
            start,
            attention_mask=torch.ones_like(start),
            do_sample=True,
            temperature=1.5,
            top_k=0,
            top_p=1.0,
            max_new_tokens=length - 1,
            min_new_tokens=length - 1,
            pad_token_id=0,
        )
    batches = []
    for rows in ids.split(batch_size):
        lengths = torch.randint(length // 2, length + 1, (len(rows),), generator=generator)
        mask = torch.arange(length)[None, :] < lengths[:, None]
        batches.append(
            {
                "input_ids": rows.where(mask, 0),
                "attention_mask": mask.long(),
                "labels": rows.where(mask, -100),
            }
        )
    return batches


def peak_growth(route: str, path: str) -> None:
    """In this (fresh) process: fit by ``route`` on the batches in ``path``; print the growth of
    the peak resident memory during the fit, in MiB."""
    batches = torch.load(path)
    model = tiny_gpt2(int(batches[0]["vocab"]))
    batches = [{k: v for k, v in batch.items() if k != "vocab"} for batch in batches]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if route == "streamed":
        scaler = TemperatureScaler(model, shift_labels=True).fit(batches)
    else:  # every shifted logit in memory, then one fit
        rows, targets = [], []
        with torch.no_grad():
            for batch in batches:
                logits = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                labels = batch["labels"][:, 1:]
                rows.append(logits[:, :-1][labels != -100])
                targets.append(labels[labels != -100])
        scaler = TemperatureScaler().fit(torch.cat(rows), torch.cat(targets))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    result = scaler.fit_result
    print(f"{(after - before) / 1024:.0f} {result.temperature:.6f} {result.n_samples}")


def measure_memory() -> None:
    vocab = 8192
    model = tiny_gpt2(vocab)
    print("sequences  tokens  logits if held   streamed fit: peak growth   held: peak growth")
    with tempfile.TemporaryDirectory() as folder:
        for n_sequences in (32, 128):
            batches = validation_batches(model, n_sequences)
            for batch in batches:
                batch["vocab"] = torch.tensor(vocab)
            path = f"{folder}/batches.pt"
            torch.save(batches, path)
            growth = {}
            for route in ("streamed", "held"):
                command = [sys.executable, __file__, "--peak", route, path]
                output = subprocess.run(command, capture_output=True, text=True, check=True)
                growth[route] = output.stdout.split()
            tokens = int(growth["streamed"][2])
            held_mib = tokens * vocab * 4 / 2**20
            print(
                f"{n_sequences:9d}  {tokens:6d}  {held_mib:11.0f} MiB   "
                f"{growth['streamed'][0]:>12} MiB (T={growth['streamed'][1]})   "
                f"{growth['held'][0]:>8} MiB (T={growth['held'][1]})"
            )


def main() -> None:
    model = tiny_gpt2(vocab=50)
    batches = validation_batches(model, n_sequences=64, length=32)
    scaler = TemperatureScaler(model, shift_labels=True).fit(batches, progress=False)
    print(scaler.fit_result)
    print(f"model passes over the loader: {scaler.fit_result.data_passes}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--peak"]:
        peak_growth(sys.argv[2], sys.argv[3])
    elif sys.argv[1:2] == ["--memory"]:
        measure_memory()
    else:
        main()
