"""A small real training run: linear regression by gradient descent on synthetic data.

It needs only the standard library and mlflow. mantik's runner sets
MLFLOW_RUN_ID, so the metrics below land in the run that mantik declared.
"""

import argparse
import random

import mlflow


def make_data(seed: int, n: int = 256):
    rng = random.Random(seed)
    xs = [rng.uniform(-1, 1) for _ in range(n)]
    ys = [3.0 * x - 0.5 + rng.gauss(0, 0.1) for x in xs]
    return xs, ys


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    xs, ys = make_data(args.seed)
    weight, bias = 0.0, 0.0
    for epoch in range(args.epochs):
        grad_w = sum(2 * (weight * x + bias - y) * x for x, y in zip(xs, ys)) / len(xs)
        grad_b = sum(2 * (weight * x + bias - y) for x, y in zip(xs, ys)) / len(xs)
        weight -= args.lr * grad_w
        bias -= args.lr * grad_b
        loss = sum((weight * x + bias - y) ** 2 for x, y in zip(xs, ys)) / len(xs)
        mlflow.log_metric("loss", loss, step=epoch)
    mlflow.log_metric("weight", weight)
    print(f"lr={args.lr} epochs={args.epochs} seed={args.seed}: loss={loss:.4f} weight={weight:.3f} bias={bias:.3f}")


if __name__ == "__main__":
    main()
