"""A small GPT-style language model (Hugging Face transformers, a tiny config, random weights: no download).

Batches are dicts of token ids; the task is language modelling: token cross-entropy averaged over each
sequence (labels = input_ids, shifted; padding ignored), and token accuracy. The fast path cannot trace a
transformers model with torch.fx, says so once, and evaluates the plain forward (same numbers).
"""

import sys
from pathlib import Path

import numpy as np
import torch
from _outputs import write_outputs
from transformers import GPT2Config, GPT2LMHeadModel

import lossviz


def main(out: Path, method: str = "auto") -> dict[str, Path]:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2, bos_token_id=0,
                        eos_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    input_ids = torch.randint(1, 64, (24, 16))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[::4, -3:] = 0  # some padded sequences: their padding is not scored
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    directions = lossviz.random_directions(model, seed=0)
    out.mkdir(parents=True, exist_ok=True)
    surface = lossviz.compute_surface(model, batch, None, directions, np.linspace(-1, 1, 5), np.linspace(-1, 1, 5),
                                      n_examples=16, task="language_modelling", out=out / "gpt_lm.h5",
                                      progress=False, method=method, meta={"model": "tiny GPT-2"})
    return write_outputs(surface, out, "gpt_lm")


if __name__ == "__main__":
    print(main(Path(sys.argv[1] if len(sys.argv) > 1 else "example_output")))
