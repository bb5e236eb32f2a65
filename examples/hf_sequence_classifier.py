"""Calibrate a Hugging Face sequence classifier on dict batches, then deploy it with torch.export.

A 1-layer BERT is built from a config (nothing is downloaded); its validation batches are the
dicts a Transformers data collator makes (``input_ids``, ``attention_mask``, ``labels``). The
labels are drawn from the model's own softmax at T = 2, so the fitted temperature is near 2.

    python examples/hf_sequence_classifier.py
"""

from __future__ import annotations

import torch
from transformers import BertConfig, BertForSequenceClassification

from torchcal import TemperatureScaler


def main() -> None:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
        initializer_range=0.5,
    )
    model = BertForSequenceClassification(config).eval()

    batches = []
    for _ in range(20):  # each batch padded to its own longest sequence
        lengths = torch.randint(3, 12, (32,))
        mask = (torch.arange(int(lengths.max()))[None, :] < lengths[:, None]).long()
        input_ids = torch.randint(1, 50, mask.shape) * mask
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=mask).logits
        labels = torch.multinomial(torch.softmax(logits / 2, dim=1), 1).squeeze(1)
        batches.append({"input_ids": input_ids, "attention_mask": mask, "labels": labels})

    scaler = TemperatureScaler(model).fit(batches, progress=False)
    print(scaler.fit_result)

    inputs = {"input_ids": batches[0]["input_ids"], "attention_mask": batches[0]["attention_mask"]}
    deployed = scaler.export("probs")  # forward(input_ids=..., attention_mask=...)
    exported = torch.export.export(deployed, (), kwargs=inputs)
    with torch.no_grad():
        difference = (exported.module()(**inputs) - scaler.predict_proba(inputs)).abs().max()
    print(f"torch.export vs eager: max |difference| = {float(difference):.1e}")


if __name__ == "__main__":
    main()
