"""Hugging Face Transformers models: dict batches, ModelOutput, causal LMs, the Trainer, export.

Tiny models are built from configs (nothing is downloaded): a 1-layer BERT sequence classifier and
a 1-layer GPT-2 with a 50-token vocabulary.
"""

from __future__ import annotations

import pytest
import torch
from conftest import scipy_temperature

transformers = pytest.importorskip("transformers")

from torchcal import TemperatureScaler  # noqa: E402
from torchcal.export import KeywordCalibratedModel  # noqa: E402

VOCAB = 50


def tiny_bert(seed=0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
        initializer_range=0.5,  # logits far enough from 0 for an interior temperature
    )
    return transformers.BertForSequenceClassification(config).eval()


def tiny_gpt2(seed=0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=32,
        n_embd=16,
        n_layer=1,
        n_head=2,
        initializer_range=0.3,
        bos_token_id=VOCAB - 1,
        eos_token_id=VOCAB - 1,
    )
    return transformers.GPT2LMHeadModel(config).eval()


def classification_batches(model, n_batches=6, batch_size=16, seed=0):
    """Dict batches padded per batch, labels drawn from the model's softmax at T = 2."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        lengths = torch.randint(3, 12, (batch_size,), generator=generator)
        width = int(lengths.max())
        mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
        ids = torch.randint(1, VOCAB, (batch_size, width), generator=generator) * mask
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
        labels = torch.multinomial(torch.softmax(logits / 2, 1), 1, generator=generator)
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": labels.squeeze(1)})
    return batches


def causal_batches(model, n_batches=5, batch_size=8, seed=0):
    """HF-convention LM batches (right padding, labels = ids with -100 on padding), each padded
    to its own longest sequence; tokens sampled from the model at temperature 1.5."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n_batches * batch_size, 1), generator=generator)
    with torch.no_grad():
        for _ in range(15):
            probs = torch.softmax(model(input_ids=ids).logits[:, -1] / 1.5, dim=-1)
            ids = torch.cat([ids, torch.multinomial(probs, 1, generator=generator)], dim=1)
    batches = []
    for rows in ids.split(batch_size):
        lengths = torch.randint(4, 17, (batch_size,), generator=generator)
        width = int(lengths.max())
        mask = torch.arange(width)[None, :] < lengths[:, None]
        rows = rows[:, :width]
        batches.append(
            {
                "input_ids": rows.where(mask, 0),
                "attention_mask": mask.long(),
                "labels": rows.where(mask, -100),
            }
        )
    return batches


def test_bert_dict_batches_fit_the_t_of_their_collected_logits():
    model = tiny_bert()
    batches = classification_batches(model)
    scaler = TemperatureScaler(model).fit(batches, progress=False)
    with torch.no_grad():
        logits = torch.cat(
            [
                model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
                for b in batches
            ]
        )
    labels = torch.cat([b["labels"] for b in batches])
    direct = TemperatureScaler().fit(logits, labels)
    assert scaler.temperature == pytest.approx(direct.temperature, rel=1e-6)
    assert scaler.temperature == pytest.approx(scipy_temperature(logits, labels), rel=1e-5)
    assert scaler.fit_result.bound is None and 1.0 < scaler.temperature < 4.0
    inputs = {key: batches[0][key] for key in ("input_ids", "attention_mask")}
    torch.testing.assert_close(scaler(inputs), logits[:16] / scaler.temperature)


def test_gpt2_next_token_fit_streams_to_the_t_of_the_shifted_logits():
    model = tiny_gpt2()
    batches = causal_batches(model)
    scaler = TemperatureScaler(model, shift_labels=True).fit(batches, progress=False)
    rows, targets = [], []
    with torch.no_grad():
        for batch in batches:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            labels = batch["labels"][:, 1:]
            rows.append(logits.logits[:, :-1][labels != -100])
            targets.append(labels[labels != -100])
    rows, targets = torch.cat(rows), torch.cat(targets)
    direct = TemperatureScaler().fit(rows, targets)
    assert scaler.temperature == pytest.approx(direct.temperature, rel=1e-6)
    assert scaler.temperature == pytest.approx(scipy_temperature(rows, targets), rel=1e-5)
    assert scaler.fit_result.n_samples == rows.shape[0] and scaler.fit_result.bound is None


def test_exported_bert_classifier_takes_keyword_inputs_and_matches_eager_under_torch_export():
    model = tiny_bert()
    batches = classification_batches(model, n_batches=2)
    scaler = TemperatureScaler(model).fit(batches, progress=False)
    inputs = {key: batches[0][key] for key in ("input_ids", "attention_mask")}
    for output in ("logits", "probs"):
        deployed = scaler.export(output)
        assert isinstance(deployed, KeywordCalibratedModel)
        eager = scaler(inputs) if output == "logits" else scaler.predict_proba(inputs)
        torch.testing.assert_close(deployed(**inputs), eager, rtol=0, atol=0)
        if output == "probs":
            exported = torch.export.export(deployed, (), kwargs=inputs)
            torch.testing.assert_close(exported.module()(**inputs), eager, rtol=1e-6, atol=1e-7)


def test_trainer_callback_fits_after_training_and_logs_the_metrics(tmp_path):
    pytest.importorskip("accelerate")
    from torchcal.integrations.hf import TemperatureScalingCallback

    model = tiny_bert()
    batches = classification_batches(model, n_batches=3)
    rows = [
        {key: batch[key][i] for key in batch}
        for batch in batches
        for i in range(len(batch["labels"]))
    ]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        num_train_epochs=1,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=16,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )

    def collate(samples):  # pad to the longest in the batch, -100 nowhere (one label per row)
        width = max(len(s["input_ids"]) for s in samples)
        return {
            "input_ids": torch.stack([pad(s["input_ids"], width) for s in samples]),
            "attention_mask": torch.stack([pad(s["attention_mask"], width) for s in samples]),
            "labels": torch.stack([s["labels"] for s in samples]),
        }

    def pad(values, width):
        return torch.cat([values, values.new_zeros(width - len(values))])

    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=rows, eval_dataset=rows, data_collator=collate
    )
    callback = TemperatureScalingCallback(trainer, save=True)
    trainer.add_callback(callback)
    trainer.train()
    scaler = callback.calibrator
    assert isinstance(scaler, TemperatureScaler) and scaler.model is trainer.model
    # the same T as a fit on the trained model's logits over the eval data
    model.eval()
    with torch.no_grad():
        loader = trainer.get_eval_dataloader()
        logits = torch.cat(
            [
                model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
                for b in loader
            ]
        )
        labels = torch.cat([b["labels"] for b in loader])
    direct = TemperatureScaler().fit(logits, labels)
    assert scaler.temperature == pytest.approx(direct.temperature, rel=1e-6)
    logged = trainer.state.log_history[-1]
    assert logged["calibration/temperature"] == pytest.approx(scaler.temperature)
    for name in ("nll_before", "nll_after", "ece_before", "ece_after"):
        assert logged[f"calibration/{name}"] == pytest.approx(getattr(direct.fit_result, name))
    import torchcal

    saved = torchcal.load(tmp_path / "calibration.safetensors")
    assert saved.temperature == scaler.temperature
