"""Train the small Fashion-MNIST MLP classifier used to judge generated samples.

Writes models/flux-fmnist/classifier.safetensors (F32: fc1.weight [256,784], fc1.bias,
fc2.weight [10,256], fc2.bias; input = pixels/255 flattened row-major; metadata holds the
test accuracy). Usage: python3 tools/training/train_classifier.py [--epochs 15] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
from tools.training.common import MODEL_DIR, MLPClassifier  # noqa: E402
from tools.training import fmnist


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(MODEL_DIR, "classifier.safetensors"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    xtr, ytr = fmnist.load("train")
    xte, yte = fmnist.load("test")
    xtr = torch.tensor(xtr, dtype=torch.float32).reshape(-1, 784) / 255
    xte = torch.tensor(xte, dtype=torch.float32).reshape(-1, 784) / 255
    ytr, yte = torch.tensor(ytr), torch.tensor(yte)
    clf = MLPClassifier()
    opt = torch.optim.AdamW(clf.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.epochs * (len(xtr) // 128))
    t0 = time.time()
    for ep in range(a.epochs):
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr) - 127, 128):
            idx = perm[i:i + 128]
            loss = torch.nn.functional.cross_entropy(clf(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            acc = (clf(xte).argmax(1) == yte).float().mean().item()
        print(f"epoch {ep + 1} loss {loss.item():.4f} test_acc {acc:.4f} ({time.time() - t0:.0f}s)")
    from safetensors.torch import save_file
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    meta = {"arch": "mlp 784-256-10 relu", "input": "pixels/255, row-major 28x28",
            "test_accuracy": f"{acc:.4f}", "epochs": str(a.epochs), "seed": str(a.seed)}
    save_file({k: v.contiguous() for k, v in clf.state_dict().items()}, a.out, metadata=meta)
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
