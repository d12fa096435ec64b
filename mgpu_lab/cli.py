"""``python -m mgpu_lab {train,limits,bench}``: one function per command."""
import argparse
import sys

__all__ = ["main", "parse_range"]


def parse_range(text):
    """'1-4' -> [1, 2, 3, 4]; '1,2,4' -> [1, 2, 4]; '3' -> [3]."""
    try:
        if "-" in text:
            a, b = (int(v) for v in text.split("-", 1))
            values = list(range(a, b + 1))
        else:
            values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N, A-B or A,B,C (integers), got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _positive(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


# -- train --------------------------------------------------------------------------
def _add_train(sub):
    p = sub.add_parser("train", help="train on the digits data with N devices; print loss and accuracy")
    p.add_argument("--devices", type=_positive, default=2, help="number of simulated devices (default 2)")
    p.add_argument("--steps", type=_positive, default=100, help="training steps (default 100)")
    p.add_argument("--batch", type=_positive, default=64, help="global batch size (default 64)")
    p.add_argument("--model", choices=["logistic", "mlp", "cnn"], default="cnn")
    p.add_argument("--engine", choices=["local", "serial", "mpi"], default="local")
    p.add_argument("--strategy", choices=["host", "ring"], default="host",
                   help="MPI only: gather to rank 0 (host) or Allreduce (ring)")
    p.add_argument("--optimizer", choices=["sgd", "momentum", "adam"], default="momentum")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", help="write a checkpoint here at the end")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=_run_train)


def digits_model(name, seed=0):
    """The book's models for the 8x8 digits."""
    from . import models
    if name == "cnn":
        return models.cnn(image_size=8, channels=1, width=8, depth=2, seed=seed)
    if name == "mlp":
        return models.mlp(n_in=64, hidden=(64,), seed=seed)
    return models.logistic(n_in=64, seed=seed)


def _run_train(args):
    from .data import load_digits, train_test_split
    from .optim import make_optimizer
    from .trainer import DataParallelTrainer
    x, y = load_digits(flat=args.model != "cnn")
    (xtr, ytr), (xte, yte) = train_test_split(x, y, seed=0)
    model = digits_model(args.model, args.seed)
    print(f"model: {model!r}; {args.devices} device(s), engine={args.engine}, "
          f"batch {args.batch} = {args.devices} splits of ~{args.batch / args.devices:.1f}")
    with DataParallelTrainer(model, args.devices, make_optimizer(args.optimizer, args.lr),
                             engine=args.engine, strategy=args.strategy) as tr:
        tr.fit(xtr, ytr, batch_size=args.batch, steps=args.steps, progress=not args.no_progress)
        loss, acc = tr.evaluate(xte, yte)
        print(f"after {tr.step_count} steps: train loss {tr.history[-1]['loss']:.4f}, "
              f"test loss {loss:.4f}, test accuracy {acc:.1%}")
        if args.save:
            print(f"checkpoint: {tr.save(args.save)}")
    return 0


# -- limits (memory model) ------------------------------------------------------------
def _add_limits(sub):
    p = sub.add_parser("limits", help="predicted largest batch per GPU kind for 1..N GPUs")
    p.set_defaults(run=lambda args: print("limits: not implemented yet") or 1)


# -- bench (measured throughput) --------------------------------------------------------
def _add_bench(sub):
    p = sub.add_parser("bench", help="measure images/s on 1..N local devices")
    p.set_defaults(run=lambda args: print("bench: not implemented yet") or 1)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m mgpu_lab",
        description="Data-parallel training with Theano on simulated devices (CPU processes).")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_limits, _add_bench):
        add(sub)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
