"""A real model for the registry: logistic regression on scikit-learn's bundled wine data set.

mantik's runner sets MLFLOW_RUN_ID, so the metric and the model below land in the run that mantik declared;
the model is logged under the name `model`, the artifact path mantik.yaml's `models:` names.
"""

import argparse

import mlflow
import mlflow.sklearn
from sklearn.datasets import load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--C", type=float, required=True)
    args = parser.parse_args()

    features, labels = load_wine(return_X_y=True)
    train_x, test_x, train_y, test_y = train_test_split(features, labels, test_size=0.3, random_state=0)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=args.C, max_iter=1000))
    model.fit(train_x, train_y)
    loss = log_loss(test_y, model.predict_proba(test_x))
    mlflow.log_metric("loss", loss)
    mlflow.log_metric("accuracy", accuracy_score(test_y, model.predict(test_x)))
    # the requirements are named, so logging does not spend seconds inferring them
    mlflow.sklearn.log_model(model, name="model", pip_requirements=["scikit-learn", "mlflow"])
    print(f"C={args.C}: loss={loss:.4f}")


if __name__ == "__main__":
    main()
