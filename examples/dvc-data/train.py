"""Linear regression on a DVC-tracked CSV file; the path comes from {data.points} in mantik.yaml."""

import argparse
import csv

import mlflow


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    args = parser.parse_args()

    with open(args.data) as handle:
        rows = [(float(r["x"]), float(r["y"])) for r in csv.DictReader(handle)]
    weight, bias = 0.0, 0.0
    for epoch in range(args.epochs):
        grad_w = sum(2 * (weight * x + bias - y) * x for x, y in rows) / len(rows)
        grad_b = sum(2 * (weight * x + bias - y) for x, y in rows) / len(rows)
        weight, bias = weight - args.lr * grad_w, bias - args.lr * grad_b
        loss = sum((weight * x + bias - y) ** 2 for x, y in rows) / len(rows)
        mlflow.log_metric("loss", loss, step=epoch)
    mlflow.log_param("rows", len(rows))
    print(f"{len(rows)} rows, lr={args.lr}: loss={loss:.4f} weight={weight:.3f}")


if __name__ == "__main__":
    main()
