"""``python -m mgpu_lab {train,limits,bench,mpi-bench,mem-bench,critical-sweep}``: one
function per command."""
import argparse
import sys

from .data import load_digits, train_test_split
from .engines.mpi import install_abort_hook, world
from .engines.strategies import STRATEGIES
from .figures import plots
from .measure import bench, critical_sweep, mem_bench, mpi_bench
from .measure.machine import save_result
from .models import fold
from .optim import make_optimizer
from .predict.gpus import CATALOGUE, DEFAULT_RESERVED, PRECISIONS, get_gpu
from .predict.memory import SHARDING_STAGES, check_sharding, predicted_limits
from .presets import BENCH_MODELS, DIGITS_MODELS, IMAGENET_MODELS, digits_model, imagenet_model
from .trainer import ENGINES, DataParallelTrainer

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


def _number(convert, low, high, what):
    """An argparse type: ``convert(text)`` that must lie in [low, high); NaN never does."""
    def parse(text):
        try:
            v = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not low <= v < high:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return v
    return parse


_positive = _number(int, 1, float("inf"), "a positive integer")
_positive_float = _number(float, float.fromhex("0x1p-1074"), float("inf"), "a positive number")
_seed = _number(int, 0, 2**32, "a seed from 0 to 2**32 - 1")  # what numpy's RandomState takes


def _usage_error(command, message):
    """Exit as argparse does for a bad flag: status 2 and the reason on stderr."""
    print(f"python -m mgpu_lab {command}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


# -- train --------------------------------------------------------------------------
def _add_train(sub):
    p = sub.add_parser("train", help="train on the digits data with N devices; print loss and accuracy")
    p.add_argument("--devices", type=_positive, default=None,
                   help="number of simulated devices (default 2; with --engine mpi: the number of ranks)")
    p.add_argument("--steps", type=_positive, default=100, help="training steps (default 100)")
    p.add_argument("--batch", type=_positive, default=64, help="global batch size (default 64)")
    p.add_argument("--model", choices=DIGITS_MODELS, default="cnn")
    p.add_argument("--engine", choices=list(ENGINES), default="local")
    p.add_argument("--strategy", choices=list(STRATEGIES), default="host",
                   help="host: the host gathers, stacks and updates; ring: the devices run a "
                        "ring all-reduce and each updates; sharded: reduce-scatter, each device "
                        "updates its shard, all-gather (ZeRO-1); hierarchical: reduce inside "
                        "each node, ring across nodes (local and mpi engines)")
    p.add_argument("--devices-per-node", type=_positive, default=None,
                   help="hierarchical: devices per node (mpi: default the ranks per machine)")
    p.add_argument("--optimizer", choices=["sgd", "momentum", "adam"], default="momentum")
    p.add_argument("--lr", type=_positive_float, default=0.05)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--save", help="write a checkpoint here at the end")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=_run_train)


def _run_train(args):
    x, y = load_digits(flat=args.model != "cnn")
    (xtr, ytr), (xte, yte) = train_test_split(x, y, seed=0)
    rank = _mpi_ranks(args) if args.engine == "mpi" else 0
    args.devices = args.devices or 2
    if not args.devices <= args.batch <= len(xtr):  # each device needs a sample; no batch > data
        _usage_error("train", f"--batch {args.batch} must lie between --devices ({args.devices}) "
                              f"and the {len(xtr)} training images")
    say = print if rank == 0 else (lambda *a, **k: None)  # under mpiexec only rank 0 speaks
    model = digits_model(args.model, args.seed)
    say(fold(f"model: {model.spec.describe()}: {model.n_params:,} parameters"))  # to the page
    say(f"{args.devices} device(s), engine={args.engine} ({args.strategy}), "
        f"batch {args.batch} = {args.devices} splits of ~{args.batch / args.devices:.1f}")
    with DataParallelTrainer(model, args.devices, make_optimizer(args.optimizer, args.lr),
                             engine=args.engine, strategy=args.strategy,
                             devices_per_node=args.devices_per_node) as tr:
        tr.fit(xtr, ytr, batch_size=args.batch, steps=args.steps,
               progress=not args.no_progress and rank == 0)
        loss, acc = tr.evaluate(xte, yte)
        say(f"after {tr.step_count} steps: train loss {tr.history[-1]['loss']:.4f}, "
            f"test loss {loss:.4f}, test accuracy {acc:.1%}")
        if args.save:  # every rank consolidates (collective); rank 0 holds it all and writes
            say(f"checkpoint: {tr.save(args.save)}")
    return 0


def _mpi_ranks(args):
    """Under mpiexec: --devices defaults to, and must equal, the number of ranks. Returns
    this process's rank (an uncaught error on any rank then aborts the whole job)."""
    comm = world()
    install_abort_hook(comm)
    args.devices = args.devices or comm.size
    if args.devices != comm.size:
        if comm.rank == 0:
            print(f"error: --devices {args.devices} but mpiexec started {comm.size} rank(s); "
                  f"with --engine mpi each rank is one device: drop --devices or run "
                  f"mpiexec -n {args.devices}", file=sys.stderr, flush=True)
        comm.Barrier()  # every rank exits only after rank 0 has said why
        raise SystemExit(2)
    return comm.rank


# -- limits (memory model) ------------------------------------------------------------
def _add_limits(sub):
    p = sub.add_parser("limits", help="predicted largest batch per GPU kind for 1..N GPUs",
                       description="The largest batch that fits on 1..N GPUs of a kind, predicted "
                       "by mgpu_lab.predict.memory from the model's Theano graph (nothing is compiled); GPU "
                       "memory from vendor datasheets (mgpu_lab.predict.gpus).")
    p.add_argument("--model", choices=IMAGENET_MODELS, default="resnet",
                   help="cnn: plain 3x3 conv stages, average-pool head; vgg16: VGG-16-like; "
                   "resnet: bottleneck ResNet; mlp: dense layers on the flattened image")
    p.add_argument("--image-size", type=_positive, default=224, help="pixels per side (default 224)")
    p.add_argument("--depth", type=_positive, default=None,
                   help="cnn: conv layers (default 16); resnet: 26, 50, 101, 152 or 200 "
                   "(default 50); mlp: hidden layers (default 2); vgg16: fixed")
    p.add_argument("--width", type=_positive, default=None,
                   help="channels of the first stage (default 64), or mlp units (default 4096)")
    p.add_argument("--gpu", default="all", help="a GPU name (e.g. V100) or 'all' (default)")
    p.add_argument("--gpus", type=parse_range, default=[1, 2, 3, 4], help="GPU counts (default 1-4)")
    p.add_argument("--optimizer", choices=["sgd", "momentum", "adam"], default="momentum",
                   help="optimizer state kept on each GPU (default momentum, as the book trains)")
    p.add_argument("--reserved-mib", type=_number(float, 0, float("inf"), "MiB >= 0"),
                   default=DEFAULT_RESERVED / 2 ** 20,
                   help="MiB per GPU not available to the step (CUDA context, framework; "
                   f"default {DEFAULT_RESERVED // 2 ** 20}, an assumption)")
    p.add_argument("--sharding", type=_sharding, default=0,
                   help="ZeRO stage: 0 none (default), 1 optimizer state, 2 + gradients, "
                   "3 + parameters, each sharded over the GPUs (2 and 3 are predicted only)")
    p.add_argument("--precision", choices=list(PRECISIONS), default="fp32",
                   help="fp32 (default) or tf32: 4 bytes a value; fp16 or bf16: mixed "
                   "precision (16-bit activations and gradients, float32 master weights)")
    p.add_argument("--recompute", action="store_true",
                   help="recompute activations in the backward pass (sqrt(L) checkpoints)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=_run_limits)


def _sharding(text):
    """An argparse type: a ZeRO stage 0..3 (memory.check_sharding's message otherwise)."""
    try:
        value = int(text)
    except ValueError:
        value = text  # not a number: check_sharding says what is allowed
    try:
        return check_sharding(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _run_limits(args):
    try:
        gpus = list(CATALOGUE) if args.gpu.lower() == "all" else [get_gpu(args.gpu).name]
        model = imagenet_model(args.model, args.image_size, args.depth, args.width)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = predicted_limits({args.model: model}, gpus, args.gpus, args.optimizer,
                            int(args.reserved_mib * 2 ** 20), progress=not args.no_progress,
                            sharding=args.sharding, precision=args.precision,
                            recompute=args.recompute)
    where = ("its state on every GPU" if not args.sharding else
             f"sharding {args.sharding}: {SHARDING_STAGES[args.sharding]}")
    how = f"precision {args.precision}" + (", recomputation" if args.recompute else "")
    print(f"{model!r}; optimizer {args.optimizer} ({where}); {how}; "
          f"{args.reserved_mib:g} MiB reserved per GPU (CUDA context, framework: an assumption); "
          "bytes per GPU at its largest batch (GiB)")
    gib = lambda v: f"{v / 2 ** 30:.2f}"  # noqa: E731
    head = ("GPU", "memory", "n GPUs", "per-GPU batch", "global batch", "params+grads",
            "optimizer", "activations", "other", "total")
    table = [head] + [(r["gpu"], f"{r['memory_gib']:.0f} GiB", str(r["n_gpus"]), str(r["per_gpu_batch"]),
                       str(r["global_batch"]), gib(r["parameters"] + r["gradients"]), gib(r["optimizer"]),
                       gib(r["activations"]), gib(r["inputs"] + r["transient"] + r["workspace"]),
                       gib(r["total"])) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
    print("other = input batch + backward temporaries + conv workspace. Predicted by "
          "mgpu_lab.predict.memory from the graph; GPU memory from vendor datasheets (mgpu_lab.predict.gpus).")
    return 0


# -- bench (measured throughput) --------------------------------------------------------
def _add_bench(sub):
    p = sub.add_parser("bench", help="measure images/s on 1..N local devices",
                       description="Real training steps on 1..N local devices (one pinned CPU "
                       "process each): images/s, speed-up, a time breakdown per step, the N=1 "
                       "overhead over a bare call, and the cost model's prediction beside it.")
    p.add_argument("--devices", type=parse_range, default=[1, 2, 3, 4],
                   help="device counts: N, A-B or A,B,C (default 1-4)")
    p.add_argument("--model", choices=list(BENCH_MODELS), default="cnn",
                   help="cnn: 32 px RGB, 4 conv layers (compute-bound); mlp: 3072-256-10")
    p.add_argument("--batch", type=parse_range, default=[64, 128, 256],
                   help="global batch sizes (default 64,128,256)")
    p.add_argument("--warmup", type=_number(int, 0, float("inf"), "an integer >= 0"), default=2,
                   help="untimed steps per configuration (default 2)")
    p.add_argument("--repeats", type=_positive, default=7, help="timed runs per configuration (default 7)")
    p.add_argument("--steps", type=_positive, default=3, help="steps per timed run (default 3)")
    p.add_argument("--strategies", type=_strategies, default=["host"],
                   help=f"strategies to compare on N > 1, e.g. host,ring,sharded (default host; "
                        f"known: {', '.join(STRATEGIES)})")
    p.add_argument("--out", default="results", help="folder for bench-*.json and .csv (default results/)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=_run_bench)


def _strategies(text):
    """'host,ring' -> ['host', 'ring'], each a name in the strategies' registry."""
    names = [s.strip() for s in text.split(",")]
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected strategies from {', '.join(STRATEGIES)} "
                                         f"separated by commas, got {text!r}")
    return names


def _run_bench(args):
    result = bench.run(args.model, args.devices, args.batch, warmup=args.warmup,
                       repeats=args.repeats, steps=args.steps, progress=not args.no_progress,
                       strategies=args.strategies)
    print(bench.format_table(result))
    print(bench.format_targets(result))
    json_path, csv_path = bench.save(result, args.out)
    print(f"saved: {json_path}\n       {csv_path}")
    return 0


# -- mpi-bench (host gather vs ring all-reduce on MPI ranks) --------------------------------
def _add_mpibench(sub):
    p = sub.add_parser("mpi-bench", help="measure the strategies' exchanges on 2..N MPI ranks",
                       description="Launches mpiexec -n N for each N (run it without mpiexec): "
                       "MPIEngine training steps of an MLP of each gradient size, their "
                       "communication time per strategy, and the cost model's prediction beside.")
    p.add_argument("--ranks", type=parse_range, default=[2, 3, 4], help="rank counts (default 2-4)")
    p.add_argument("--sizes", type=_byte_sizes, default=[1e6, 1e7, 1e8],
                   help="gradient sizes in bytes (default 1e6,1e7,1e8)")
    p.add_argument("--strategies", type=_strategies, default=list(mpi_bench.STRATEGIES),
                   help=f"strategies to compare (default {','.join(mpi_bench.STRATEGIES)})")
    p.add_argument("--repeats", type=_positive, default=5,
                   help="timed training steps per size and strategy (default 5)")
    p.add_argument("--out", default="results", help="directory for the JSON, CSV and PNG (default results/)")
    p.set_defaults(run=_run_mpibench)


def _byte_sizes(text):
    """'1e6,1e7' -> [1e6, 1e7]: gradient sizes in bytes, each at least one float32."""
    try:
        sizes = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected bytes separated by commas, e.g. 1e6,1e7; got {text!r}") from None
    if min(sizes) < 4:
        raise argparse.ArgumentTypeError(f"every size must be >= 4 bytes (one float32), got {text!r}")
    return sizes


def _run_mpibench(args):
    result = mpi_bench.run(args.ranks, args.sizes, args.strategies, repeats=args.repeats)
    print(mpi_bench.format_table(result))
    paths, base = mpi_bench.save(result, args.out)
    figure = plots.mpi_comm(result)  # measure returns data; figures draws it
    paths.append(base.with_suffix(".png"))
    figure.savefig(paths[-1], dpi=120, bbox_inches="tight")
    for path in paths:
        print(f"saved: {path}")
    return 0


# -- mem-bench (each worker's resident memory per strategy) ---------------------------------
def _add_membench(sub):
    p = sub.add_parser("mem-bench", help="measure each device's resident memory per strategy",
                       description="Trains an MLP of about SIZE/4 parameters a few steps on N "
                       "local devices under each strategy and reports every worker's resident "
                       "memory (psutil) beside the memory model's prediction of the differences.")
    p.add_argument("--devices", type=_positive, default=2, help="devices (default 2)")
    p.add_argument("--size", type=_byte_sizes, default=[40e6],
                   help="the parameters' bytes, 4P (default 40e6: about 10 M parameters)")
    p.add_argument("--optimizer", choices=["sgd", "momentum", "adam"], default="adam")
    p.add_argument("--steps", type=_positive, default=3, help="steps before measuring (default 3)")
    p.add_argument("--out", default="results", help="directory for the JSON (default results/)")
    p.set_defaults(run=_run_membench)


def _run_membench(args):
    result = mem_bench.run(args.devices, args.size[0], args.optimizer, args.steps)
    print(mem_bench.format_table(result))
    json_path, _, _ = save_result(result, args.out, "mem-bench", {})
    print(f"saved: {json_path}")
    return 0


# -- critical-sweep (the statistical batch limit, measured) ----------------------------------
def _add_critical(sub):
    d = critical_sweep.DEFAULTS
    p = sub.add_parser("critical-sweep", help="measure the critical batch on the digits "
                       "(steps to a target per batch) and the gradient noise scale",
                       description="For each batch size, SGD's learning rate tuned on a grid, "
                       "the steps and samples to a target validation loss, the gradient noise "
                       "scale B_simple from the devices' gradients, Goyal et al.'s linear "
                       "scaling rule beside; McCandlish et al.'s trade-off fitted (B_crit). "
                       "Serial engine with 2 devices, digits MLP; a few minutes on 2 cores.")
    p.add_argument("--batch", type=parse_range, default=list(d["batch_sizes"]),
                   help="batch sizes, A,B,C (default 2,4,...,1024)")
    p.add_argument("--seeds", type=_seed_list, default=list(d["seeds"]),
                   help="seeds to average over, e.g. 0,1 (default)")
    p.add_argument("--target", type=_positive_float, default=d["target"],
                   help=f"target validation loss (default {d['target']})")
    p.add_argument("--budget", type=_positive, default=d["budget"],
                   help=f"most steps per run (default {d['budget']})")
    p.add_argument("--out", default=str(critical_sweep.DATA_FILE),
                   help="the JSON to write (default data/critical_batch.json)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=_run_critical)


def _seed_list(text):
    """'0,1' -> [0, 1]: seeds, each one numpy's RandomState takes."""
    return [_seed(v) for v in text.split(",")]


def _run_critical(args):
    try:
        result = critical_sweep.run(progress=not args.no_progress, batch_sizes=args.batch,
                                    seeds=args.seeds, target=args.target, budget=args.budget)
    except ValueError as e:
        _usage_error("critical-sweep", str(e))
    print(critical_sweep.format_table(result))
    print(f"saved: {critical_sweep.save(result, args.out)}")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m mgpu_lab",
        description="Data-parallel training with Theano on simulated devices (CPU processes).")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_limits, _add_bench, _add_mpibench, _add_membench,
                _add_critical):
        add(sub)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
