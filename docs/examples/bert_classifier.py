"""A BERT-style sentence classifier (Hugging Face transformers, tiny config, random weights) fed dict batches
from a map-style Dataset: each item {input_ids, attention_mask, labels}; 'labels' are the targets, the other
keys go to the forward as keyword arguments, and the model's SequenceClassifierOutput is read by its logits.
"""

import sys
from pathlib import Path

import numpy as np
import torch
from _outputs import write_outputs
from torch.utils.data import Dataset
from transformers import BertConfig, BertForSequenceClassification

import lossviz


class Sentences(Dataset):
    """Token-id sentences of varying length, padded to 12, with one of 3 labels."""

    def __init__(self, n: int = 200):
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, 100, (n, 12), generator=generator)
        self.lengths = torch.randint(4, 13, (n,), generator=generator)
        self.labels = torch.randint(0, 3, (n,), generator=generator)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        mask = (torch.arange(12) < self.lengths[index]).long()
        return {"input_ids": self.ids[index] * mask, "attention_mask": mask, "labels": self.labels[index]}


def main(out: Path, method: str = "auto") -> dict[str, Path]:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=16, num_labels=3)
    model = BertForSequenceClassification(config).eval()
    directions = lossviz.random_directions(model, seed=0)
    out.mkdir(parents=True, exist_ok=True)
    surface = lossviz.compute_surface(model, Sentences(), None, directions, np.linspace(-1, 1, 5),
                                      np.linspace(-1, 1, 5), n_examples=32, out=out / "bert.h5", progress=False,
                                      method=method, meta={"model": "tiny BERT"})
    return write_outputs(surface, out, "bert")


if __name__ == "__main__":
    print(main(Path(sys.argv[1] if len(sys.argv) > 1 else "example_output")))
