"""Hugging Face models and the Trainer integration with the real packages: tiny models built from
configs (no downloads, no tokenizer: input ids are made directly), CPU, a few epochs."""
import pytest
import torch
from torch.utils.data import Dataset

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
import sb_accel  # noqa: E402
from sb_accel.integrations.huggingface import SelectiveBackpropTrainer  # noqa: E402

VOCAB, SEQ, N, BATCH, EPOCHS, SELECTIVITY = 64, 8, 320, 16, 3, 0.33


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


class Sequences(Dataset):
    """Dict examples as a tokenizer would give them: input_ids, attention_mask, labels (the class is
    read off the first token, so a model can learn it)."""

    def __init__(self, n=N, causal=False, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, VOCAB, (n, SEQ), generator=g)
        self.mask = torch.ones(n, SEQ, dtype=torch.long)
        self.mask[n // 2:, SEQ - 2:] = 0          # some padding
        self.labels = self.ids.clone() if causal else self.ids[:, 0] % 3
        if causal:
            self.labels[self.mask == 0] = -100

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


def _bert(**config):
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=SEQ, num_labels=3, **config)
    return transformers.BertForSequenceClassification(config)


def _gpt2():
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=16, n_layer=1, n_head=2)
    return transformers.GPT2LMHeadModel(config)


def _args(tmp_path, **kw):
    kw = {"num_train_epochs": EPOCHS, "per_device_train_batch_size": BATCH, "learning_rate": 1e-3,
          "lr_scheduler_type": "linear", "warmup_steps": 0, "save_strategy": "no", "logging_strategy": "no",
          "report_to": [], "use_cpu": True, "seed": 0, "disable_tqdm": True, "dataloader_pin_memory": False,
          **kw}
    return transformers.TrainingArguments(output_dir=str(tmp_path), **kw)


class Recorder(transformers.TrainerCallback):
    def __init__(self):
        self.optimizer_steps = 0
        self.lrs = []

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.optimizer_steps += 1

    def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
        self.lrs.append(lr_scheduler.get_last_lr()[0])


class CountingTrainer(SelectiveBackpropTrainer):
    """Records the rows of every batch trained and the planned length of every epoch."""

    def compute_loss(self, model, inputs, **kw):
        if model.training:
            self.rows.append(len(inputs["labels"]))
        return super().compute_loss(model, inputs, **kw)

    def get_train_dataloader(self):
        self.rows = []
        return super().get_train_dataloader()


def test_trainer_selects_steps_once_per_batch_and_completes_the_schedule(tmp_path):
    torch.manual_seed(0)
    recorder = Recorder()
    trainer = CountingTrainer(model=_bert(), args=_args(tmp_path), train_dataset=Sequences(),
                              eval_dataset=Sequences(64, seed=1), callbacks=[recorder], selectivity=SELECTIVITY,
                              engine="torch-fp32")
    trainer.train()
    loader = trainer.selective_loader
    steps = trainer.state.global_step
    # one optimizer step per yielded batch, each a full batch (no step without a batch)
    assert recorder.optimizer_steps == steps == len(trainer.rows) == loader.steps == trainer.state.max_steps
    assert set(trainer.rows) == {BATCH} and loader.epoch == EPOCHS
    # a priming pass over everything, then about `selectivity` of the data: fewer steps than plain training
    assert steps == EPOCHS * round((N + (EPOCHS - 1) * SELECTIVITY * N) / (EPOCHS * BATCH))
    stats = loader.stats()
    assert abs((stats["kept"] - N) / stats["forwards"] - SELECTIVITY) < 0.1
    # the linear schedule was built for the real step count and decayed to zero
    assert recorder.lrs[-1] == 0.0 and recorder.lrs[0] == pytest.approx(1e-3 * (steps - 1) / steps)
    # evaluation is the Trainer's own
    assert "eval_loss" in trainer.evaluate()


def test_causal_lm_is_selected_per_sequence(tmp_path):
    """A tiny GPT-2: causal_lm_loss scores each sequence as the model's own (shifted) loss would."""
    torch.manual_seed(0)
    data = Sequences(causal=True)
    model = _gpt2().eval()
    batch = {k: torch.stack([data[i][k] for i in range(N // 2 - 2, N // 2 + 2)]) for k in data[0]}
    with torch.no_grad():
        per_sequence = sb_accel.causal_lm_loss(model(input_ids=batch["input_ids"],
                                                     attention_mask=batch["attention_mask"]), batch)
        own = [model(**{k: v[i:i + 1] for k, v in batch.items()}).loss for i in range(4)]
    assert torch.allclose(per_sequence, torch.stack(own), atol=1e-5)

    trainer = SelectiveBackpropTrainer(model=model.train(), args=_args(tmp_path, num_train_epochs=2), train_dataset=data,
                                       loss_fn=sb_accel.causal_lm_loss, selectivity=0.5, engine="torch-fp32")
    trainer.train()
    loader = trainer.selective_loader
    assert trainer.state.global_step == loader.steps == 2 * round(1.5 * N / (2 * BATCH))
    stats = loader.stats()
    assert abs((stats["kept"] - N) / stats["forwards"] - 0.5) < 0.1


def test_resumes_from_an_epoch_end_checkpoint_as_if_uninterrupted(tmp_path):
    args = _args(tmp_path, save_strategy="epoch", num_train_epochs=2)
    # no dropout: the loader's candidate DataLoader draws a seed from the global RNG when it restarts
    # on resume, which would move dropout masks (not something the checkpoint can bring back)
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    torch.manual_seed(0)
    whole = SelectiveBackpropTrainer(model=_bert(**no_dropout), args=args, train_dataset=Sequences(),
                                     engine="torch-fp32")
    whole.train()
    per_epoch = whole.state.global_step // 2
    first_epoch = tmp_path / f"checkpoint-{per_epoch}"
    assert (first_epoch / "selective_loader-0.pt").is_file()

    torch.manual_seed(1)   # other initial weights: the checkpoint must bring back the model and the loader
    resumed = SelectiveBackpropTrainer(model=_bert(**no_dropout), args=args, train_dataset=Sequences(),
                                       engine="torch-fp32")
    resumed.train(resume_from_checkpoint=str(first_epoch))
    assert resumed.state.global_step == whole.state.global_step == resumed.selective_loader.steps
    assert resumed.selective_loader.stats()["kept"] == whole.selective_loader.stats()["kept"]
    for a, b in zip(whole.model.parameters(), resumed.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)

    (first_epoch / "selective_loader-0.pt").unlink()
    with pytest.raises(ValueError, match="epoch-end checkpoint"):
        SelectiveBackpropTrainer(model=_bert(), args=args, train_dataset=Sequences()).train(str(first_epoch))


def test_bad_settings_are_clear_errors(tmp_path):
    for bad, match in (({"num_train_epochs": 1.5}, "integer num_train_epochs"),
                       ({"train_sampling_strategy": "group_by_length"}, "own order"),
                       ({"max_steps": 10}, "no max_steps")):
        trainer = SelectiveBackpropTrainer(model=_bert(), args=_args(tmp_path, **bad), train_dataset=Sequences())
        with pytest.raises(ValueError, match=match):
            trainer.train()
