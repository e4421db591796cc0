"""In the style of the reference's training docs ("Train in native PyTorch"): a DataLoader, AdamW, get_scheduler,
model(**batch).loss. Written for transformers; the compat tests swap the imports only."""
import csv
import sys

import torch
from torch.utils.data import DataLoader

from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, get_scheduler


def main(model_path, train_file, num_epochs=1, rows=32):
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2, dtype=torch.float32,
                                                               device_map="cpu", low_cpu_mem_usage=True,
                                                               attn_implementation="sdpa")
    with open(train_file, encoding="utf-8") as f:
        data = list(csv.DictReader(f, delimiter="\t"))[:rows]
    features = [{**tokenizer(r["sentence"], truncation=True, max_length=64), "labels": int(r["label"])} for r in data]
    loader = DataLoader(features, batch_size=8, shuffle=False, collate_fn=DataCollatorWithPadding(tokenizer))
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
    num_training_steps = num_epochs * len(loader)
    lr_scheduler = get_scheduler(name="linear", optimizer=optimizer, num_warmup_steps=1,
                                 num_training_steps=num_training_steps)
    model.train()
    losses = []
    for _ in range(num_epochs):
        for batch in loader:
            outputs = model(**batch)
            loss = outputs.loss
            loss.backward()
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
            losses.append(float(loss))
    return {"losses": losses, "last_lr": lr_scheduler.get_last_lr()[0]}


if __name__ == "__main__":
    print(main(*sys.argv[1:3]))
