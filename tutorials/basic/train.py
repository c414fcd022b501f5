"""Train a small neural network on scikit-learn's bundled handwritten digits.

The data set ships inside scikit-learn, so this runs without any download.
Try it: python train.py --learning_rate 0.01 --epochs 20
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--learning_rate", type=float, default=0.001)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=64, help="hidden layer width")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data / 16.0, digits.target, test_size=0.25, random_state=args.seed
    )
    model = MLPClassifier(
        hidden_layer_sizes=(args.hidden,),
        learning_rate_init=args.learning_rate,
        max_iter=args.epochs,
        random_state=args.seed,
    )
    start = time.monotonic()
    with warnings.catch_warnings():
        # Few epochs on purpose: a sweep should show the trade-off, not converge.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x_train, y_train)
    accuracy = model.score(x_test, y_test)
    elapsed = time.monotonic() - start
    print(
        f"learning_rate={args.learning_rate} epochs={args.epochs}: "
        f"test accuracy {accuracy:.3f} ({elapsed:.1f}s)"
    )
    # The metrics line `caliban results` reads: a JSON object on a line of its own
    # (the last one wins). With caliban installed in the image, caliban.report(...)
    # prints the same line.
    print(
        json.dumps({"accuracy": round(accuracy, 4), "seconds": round(elapsed, 2)}),
        flush=True,
    )


if __name__ == "__main__":
    main()
