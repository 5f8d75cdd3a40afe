"""The new classifier layer: softmax regression on the backbone's features, in numpy.

With a few dozen images per class, retraining only the last layer on fixed features is what
generalises (and what a Pi can do in seconds); the backbone stays the shipped int8 one. Features
are standardised while training and the standardisation folded back into the weights, so the
deployed layer reads the raw features. Classes are weighted by their inverse frequency, so a
large class does not drown a small one. Mini-batch Adam in float64 with a seeded shuffle: the
same data and seed give the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BATCH = 64
LEARNING_RATE = 0.01
L2 = 1e-3


@dataclass
class Head:
    weight: np.ndarray  # C x 1280 float32
    bias: np.ndarray    # C float32

    def logits(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weight.T + self.bias


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def train_head(x: np.ndarray, y: np.ndarray, classes: int, epochs: int, seed: int,
               l2: float = L2, learning_rate: float = LEARNING_RATE) -> Head:
    """Fit W, b minimising the class-weighted cross-entropy of softmax(x W^T + b) plus
    l2/2 |W|^2 (on standardised features)."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x, np.float64)
    n, d = x.shape
    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-6
    z = (x - mean) / scale
    counts = np.bincount(y, minlength=classes).astype(np.float64)
    sample_weight = (n / (classes * np.maximum(counts, 1)))[y]
    onehot = np.eye(classes)[y]
    w = np.zeros((classes, d))
    b = np.zeros(classes)
    params = [w, b]
    m1 = [np.zeros_like(p) for p in params]
    m2 = [np.zeros_like(p) for p in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    steps = epochs * -(-n // BATCH)
    step = 0
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, BATCH):
            idx = order[start:start + BATCH]
            zb, sw = z[idx], sample_weight[idx]
            p = softmax(zb @ w.T + b)
            g = (p - onehot[idx]) * sw[:, None] / sw.sum()
            grads = [g.T @ zb + l2 * w, g.sum(axis=0)]
            step += 1
            lr = learning_rate * 0.5 * (1 + np.cos(np.pi * (step - 1) / steps))  # cosine decay
            for p_, g_, a, v in zip(params, grads, m1, m2):
                a *= beta1
                a += (1 - beta1) * g_
                v *= beta2
                v += (1 - beta2) * g_ * g_
                p_ -= lr * (a / (1 - beta1 ** step)) / (np.sqrt(v / (1 - beta2 ** step)) + eps)
    weight = w / scale
    bias = b - weight @ mean
    return Head(weight.astype(np.float32), bias.astype(np.float32))
