"""The command line: ``kdbench run | list | status | report | probe`` (thin: all logic lives in
grids, runs, runners and reports)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from kdbench.data import DatasetError
from kdbench.grid import PAIR_PRESETS, Grid, GridError, build_grid, load_grid_file, with_overrides
from kdbench.registry import DATASETS, METHODS, MODELS, RUNNERS, UnknownNameError, import_user_modules
from kdbench.runners.scheduler import SlurmUnavailable

log = logging.getLogger("kdbench")

DEFAULT_OUT = "kdbench-out"


def _grid_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("grid (flags override the grid file)")
    g.add_argument("--grid", metavar="FILE", help="YAML grid file (dataset, pairs, methods, seeds, recipe, overrides…)")
    g.add_argument("--dataset", help="dataset name (default: digits); see `kdbench list datasets`")
    g.add_argument("--methods", help="'all' (default) or a comma-separated list; vanilla and kd are always added")
    g.add_argument("--pairs", help="a preset (see `kdbench list pairs`) or 'teacher->student,…'")
    g.add_argument("--seeds", help="number of seeds (default 2) or a comma-separated list")
    g.add_argument("--epochs", type=int, help="main-stage epochs (default: the dataset's recipe)")
    g.add_argument("--batch-size", type=int, help="batch size (default: the dataset's recipe)")
    g.add_argument("--lr", type=float, help="learning rate (default: the dataset's recipe)")
    g.add_argument("--amp", action="store_true", help="bf16 autocast (changes results: part of the run key)")
    g.add_argument("--channels-last", action="store_true",
                   help="channels_last memory format (changes results on CPU: part of the run key)")
    g.add_argument("--teacher-seed", type=int, help="seed of the teachers' training (default 0)")
    g.add_argument("--teacher-epochs", type=int,
                   help="epochs of the teachers' training (default: the dataset's teacher epochs, e.g. 15 for digits; "
                        "for a dataset without them, --epochs)")
    g.add_argument("--set", dest="assignments", action="append", default=[], metavar="METHOD.OPTION=VALUE",
                   help="override a method option, e.g. --set kd.temperature=2 (repeatable)")
    g.add_argument("--teacher-ckpt", action="append", default=[], metavar="[ARCH=]PATH",
                   help="use this checkpoint (a state dict, or RepDistiller's {'model': ...}) for teacher ARCH instead "
                        "of training it; without ARCH= the architecture comes from the folder name as in "
                        "RepDistiller (resnet32x4_vanilla/ckpt_epoch_240.pth) (repeatable)")
    _import_arg(g)
    _out_arg(g)


def _import_arg(p: Any, dest: str = "imports") -> None:
    p.add_argument("--import", dest=dest, action="append", default=[], metavar="MODULE",
                   help="import a module that registers methods/models/datasets (repeatable)")


def _out_arg(p: Any, dest: str = "out") -> None:
    p.add_argument("--out", dest=dest, default=None,
                   help=f"results folder (default: $KDBENCH_OUT or ./{DEFAULT_OUT})")


def _env_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("execution (does not change run keys)")
    g.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
    g.add_argument("--data-root", help="data root (default: $KDBENCH_DATA or ~/.cache/kdbench/data)")
    g.add_argument("--download", action="store_true", help="let torchvision download the dataset if it can")
    g.add_argument("--runner", help="inline (default), local or slurm; see `kdbench list runners`")
    g.add_argument("--keep-failed", action="store_true",
                   help="do not retry failed runs (by default a re-run retries them; done and skipped runs are final)")
    g.add_argument("--retry-failed", action="store_true", help=argparse.SUPPRESS)  # retrying is the default now; still accepted
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--fuse", action="store_true", default=None,
                   help="train each grid column (the runs of one dataset, recipe, seed and teacher) in one pass: "
                        "batches and the teacher's forward computed once, results bit-identical (grid file: fuse: true)")
    g.add_argument("--fuse-max", type=int, metavar="N",
                   help="fuse at most N runs per pass (caps the memory of a column; implies --fuse)")
    r = p.add_argument_group("runners local and slurm (also a `runner:` block in the grid file)")
    r.add_argument("--max-parallel", type=int, help="local: jobs at a time (default: GPUs, else CPU cores)")
    r.add_argument("--time-min", dest="timeout_min", type=float, help="time limit per job in minutes (default 1440)")
    r.add_argument("--cpus-per-job", type=int, help="CPUs (and torch threads) per job")
    r.add_argument("--gpus-per-job", type=int, help="slurm: GPUs per job (default 0)")
    r.add_argument("--mem-gb", type=float, help="slurm: memory per job in GB")
    r.add_argument("--partition", help="slurm: partition")
    r.add_argument("--array-parallelism", type=int, help="slurm: tasks of one array running at once (default 256)")
    r.add_argument("--max-requeues", type=int, help="slurm: requeues after time-outs/preemptions (default 3)")
    r.add_argument("--sbatch", action="append", metavar="KEY=VALUE",
                   help="slurm: an extra sbatch option, e.g. account=proj, qos=high, constraint=a100 (repeatable)")
    r.add_argument("--setup", action="append", metavar="COMMAND",
                   help="slurm: a shell line run before each job, e.g. 'module load cuda' (repeatable)")
    r.add_argument("--hold", action="store_true", help="slurm: submit the jobs held (release: scontrol release ID)")
    r.add_argument("--wait", action="store_true", help="slurm: wait for the jobs to end, then print the leaderboard")


def _verbosity_args(p: argparse.ArgumentParser, top_level: bool = False) -> None:
    """-v/-q, accepted before and after the subcommand. Only the top level sets defaults, so
    a subcommand that is given neither flag does not reset what came before it."""
    p.add_argument("-v", "--verbose", action="count", default=0 if top_level else argparse.SUPPRESS,
                   help="debug logging (per-epoch lines, stage plans)")
    p.add_argument("-q", "--quiet", action="store_true", default=False if top_level else argparse.SUPPRESS,
                   help="warnings and results only")


_VERBOSITY_FLAGS = frozenset({"-v", "-vv", "-vvv", "--verbose", "-q", "--quiet"})
#: Options with a value that may also come before the subcommand (``kdbench --out D status``).
_GLOBAL_VALUE_FLAGS = frozenset({"--import", "--out"})


def _leading_global_options(argv: list[str]) -> int:
    """How many leading items of ``argv`` are global options (-v/-q, --import M, --out D)."""
    i = 0
    while i < len(argv):
        if argv[i] in _VERBOSITY_FLAGS or ("=" in argv[i] and argv[i].partition("=")[0] in _GLOBAL_VALUE_FLAGS):
            i += 1
        elif argv[i] in _GLOBAL_VALUE_FLAGS and i + 1 < len(argv):
            i += 2
        else:
            break
    return i


def with_default_command(argv: list[str]) -> list[str]:
    """``argv`` with ``run`` inserted where no subcommand was named: after any leading
    global options, when nothing or an option (other than -h/--help) follows them."""
    i = _leading_global_options(argv)
    if i == len(argv) or (argv[i].startswith("-") and argv[i] not in ("-h", "--help")):
        return [*argv[:i], "run", *argv[i:]]
    return argv


def merge_global_options(args: argparse.Namespace) -> argparse.Namespace:
    """Fold options given before the subcommand into the subcommand's: modules to import
    add up; ``--out`` after the subcommand wins, then before it, then $KDBENCH_OUT."""
    args.imports = list(getattr(args, "global_imports", [])) + list(getattr(args, "imports", None) or [])
    args.out = getattr(args, "out", None) or getattr(args, "global_out", None) or \
        os.environ.get("KDBENCH_OUT") or DEFAULT_OUT
    return args


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdbench", description="Benchmark knowledge-distillation methods.")
    _verbosity_args(parser, top_level=True)
    _import_arg(parser, dest="global_imports")
    _out_arg(parser, dest="global_out")
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser("run", help="train the grid (resumes; never redoes a finished run) and print the leaderboard")
    _grid_args(run)
    _env_args(run)
    run.add_argument("--dry-run", action="store_true", help="list the runs and their state, train nothing")
    run.add_argument("--metric", default="last", choices=["last", "best"], help="leaderboard accuracy (default last)")

    lst = sub.add_parser("list", help="list methods, models, datasets, pairs, runners or trained teachers")
    lst.add_argument("what", choices=["methods", "models", "datasets", "pairs", "runners", "teachers"])
    lst.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'resnet*'")
    _out_arg(lst)
    _import_arg(lst)

    status = sub.add_parser("status", help="done / pending / running / failed / skipped per run of a grid")
    _grid_args(status)

    report = sub.add_parser("report", help="leaderboards with tested arrows, summary columns, costs and plots from a "
                                           "results folder, or a published table")
    _out_arg(report)
    report.add_argument("--dataset", help="dataset to report (required if the folder holds several)")
    report.add_argument("--metric", default="last", type=_report_metric, metavar="last|best|top5|time|probe:TARGET",
                        help="what the cells show (default last); probe:TARGET: the linear-probe accuracy on TARGET "
                             "written by `kdbench probe` (probe:TARGET@KEY picks one of several probe settings)")
    report.add_argument("--format", default="terminal", choices=["terminal", "md", "latex", "html", "csv", "json"])
    report.add_argument("--baseline", default="kd", metavar="METHOD",
                        help="the row every arrow compares with (default kd; its own arrow is against vanilla)")
    report.add_argument("--ari-ref", metavar="METHOD", help="add the ARI column: METHOD's average relative "
                        "improvement over each row (a published table: its own reference by default)")
    report.add_argument("--compare", metavar="TABLE", help="put a published table's numbers beside the cells "
                        "(a name in reports/paper_tables/, e.g. cnn2gnn_cifar100)")
    report.add_argument("--table", metavar="TABLE", help="render a published table alone (e.g. hkd_tiny_imagenet)")
    report.add_argument("--sort", choices=["delta", "rank", "ari"], help="order the method rows, best first")
    report.add_argument("--alpha", type=float, default=0.05, help="level of the arrows' Welch t-tests (default 0.05)")
    report.add_argument("--plots", metavar="DIR", help="also write the plots as PNG files into DIR")
    report.add_argument("--output", metavar="FILE", help="write to FILE instead of standard output")
    probe = sub.add_parser("probe", help="linear-probe transfer (HKD Table 4): a linear classifier on every done "
                                         "student's frozen embeddings of another dataset; cached in each run folder")
    _out_arg(probe)
    probe.add_argument("--dataset", help="the source dataset the students were trained on (default: the only one "
                                         "with done runs in the folder)")
    probe.add_argument("--target", action="append", required=True, metavar="DATASET[,DATASET…]",
                       help="dataset(s) to probe on, e.g. stl10,tiny_imagenet (repeatable)")
    probe.add_argument("--data-root", help="data root (default: $KDBENCH_DATA or ~/.cache/kdbench/data)")
    probe.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps (does not change the key)")
    probe.add_argument("--weight-decay", type=float, help="the classifier's L2 weight decay (default 5e-4)")
    probe.add_argument("--max-iter", type=int, help="L-BFGS iterations (default 100)")
    _import_arg(probe)
    for subcommand in (run, lst, status, report, probe):
        _verbosity_args(subcommand)
    return parser


def _report_metric(text: str) -> str:
    """``--metric``: last, best, top5, time or probe:TARGET[@KEY]."""
    from kdbench.reports.leaderboard import METRICS, probe_target

    if text in METRICS or probe_target(text):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not a metric: choose from {', '.join(METRICS)} or probe:TARGET "
                                     f"(e.g. probe:stl10)")


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("kdbench")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def grid_from_args(args: argparse.Namespace) -> Grid:
    import_user_modules(args.imports)
    file_values = load_grid_file(args.grid) if args.grid else {}
    if args.imports:
        file_values["imports"] = list(file_values.get("imports") or []) + args.imports
    teachers = dict(file_values.get("teachers") or {})
    for item in args.teacher_ckpt:
        from kdbench.teachers.checkpoints import CheckpointError, parse_teacher_ckpt

        try:
            arch, path = parse_teacher_ckpt(item)  # ARCH=PATH, or PATH in RepDistiller's <arch>_vanilla/ folder
        except CheckpointError as exc:
            raise GridError(f"--teacher-ckpt: {exc}") from None
        teachers[arch] = path
    if teachers:
        file_values["teachers"] = teachers
    recipe = dict(file_values.get("recipe") or {})
    for name in ("batch_size", "lr"):
        if getattr(args, name, None) is not None:
            recipe[name] = getattr(args, name)
    for flag in ("amp", "channels_last"):
        if getattr(args, flag, False):
            recipe[flag] = True
    if recipe:
        file_values["recipe"] = recipe
    grid = build_grid(file_values, dataset=args.dataset, methods=args.methods, pairs=args.pairs, seeds=args.seeds,
                      epochs=args.epochs, teacher_seed=args.teacher_seed,
                      teacher_epochs=args.teacher_epochs, fuse=getattr(args, "fuse", None),
                      fuse_max=getattr(args, "fuse_max", None))
    return with_overrides(grid, args.assignments) if args.assignments else grid


#: ``kdbench run`` flags that are runner options (``None`` when not given).
RUNNER_FLAGS = ("max_parallel", "timeout_min", "cpus_per_job", "gpus_per_job", "mem_gb", "partition",
                "array_parallelism", "max_requeues", "sbatch", "setup", "hold", "wait")


def make_runner(args: argparse.Namespace, grid: Grid) -> Any:
    """The runner named by ``--runner`` or the grid's ``runner: {name: …}``, with the
    grid's options overridden by flags; an option the runner does not take is an error
    listing those it does."""
    from kdbench.runners.options import runner_from_options

    options = {str(k).replace("-", "_"): v for k, v in grid.runner.items()}
    name = args.runner or options.pop("name", None) or "inline"
    options.pop("name", None)
    for flag in RUNNER_FLAGS:
        value = getattr(args, flag, None)
        if value not in (None, False, []):
            options[flag] = value
    return runner_from_options(name, options, keep_failed=args.keep_failed)


def cmd_run(args: argparse.Namespace) -> int:
    from kdbench.runners.jobs import JobOptions
    from kdbench.store import Store
    from kdbench.train import Env

    grid = grid_from_args(args)
    specs = grid.expand()
    store = Store(args.out)
    if args.dry_run:
        _print_status(specs, store)
        return 0
    runner = make_runner(args, grid)
    env = Env(device=args.device, data_root=args.data_root)
    if runner.name == "slurm":
        env.check_device_name()  # the GPUs are on the compute nodes, not here
    else:
        env.torch_device  # fail fast on --device tpu, or cuda without CUDA
    store.check_writable()  # --out a file or read-only: an error before the dataset loads
    options = JobOptions(out=str(store.root), device=args.device, data_root=args.data_root, download=args.download,
                         progress=False if args.no_progress else None, imports=tuple(grid.imports),
                         keep_failed=args.keep_failed, log_level=logging.getLogger("kdbench").level,
                         fuse=grid.fuse, fuse_max=grid.fuse_max)
    n_teachers = len({s.teacher for s in specs if s.teacher})
    log.info("grid: %s, %d pair(s), %d method(s), %d seed(s) -> %d runs (+ %d teacher(s)) into %s",
             grid.dataset, len(grid.pairs), len(grid.method_names()), len(grid.seeds), len(specs), n_teachers,
             store.root)
    try:
        rows = runner.submit(specs, options)
    except KeyboardInterrupt:
        log.warning("interrupted: finished runs are kept; re-run the same command to resume")
        _print_leaderboard(store, grid, specs, args.metric)
        return 130
    _print_leaderboard(store, grid, specs, args.metric)
    failed = [r for r in rows if r.get("status") == "failed"]
    return 1 if failed else 0


def grid_run_keys(specs: list) -> set[str]:
    """The run keys of ``specs`` and of the teacher runs they depend on."""
    from kdbench.run import resolve

    keys = set()
    for spec in specs:
        keys.add(resolve(spec).key)
        teacher = spec.teacher_spec()
        if teacher is not None:
            keys.add(resolve(teacher).key)
    return keys


def _print_leaderboard(store: Any, grid: Grid, specs: list, metric: str) -> None:
    """The leaderboards (``metric`` and wall time) of this grid's runs only: other runs in
    the same folder (another recipe, other options) are never mixed in."""
    from kdbench.reports.leaderboard import build_leaderboards, rows_frame
    from kdbench.reports.render import render_tables

    keys = grid_run_keys(specs)
    df = rows_frame(r for r in store.iter_results() if r.get("run_key") in keys)
    if df.empty:
        log.info("no finished runs of this grid to show yet")
        return
    color = sys.stdout.isatty()
    for m in (metric, "time"):
        tables = build_leaderboards(df, grid.dataset, m, pairs=grid.pairs, methods=grid.method_names(),
                                    expected_seeds=len(grid.seeds))
        if tables:
            sys.stdout.write(render_tables(tables, color=color) + "\n")


def _print_status(specs: list, store: Any) -> int:
    """The status table; exit code 1 when a run failed."""
    from kdbench.status import print_status

    counts = print_status(specs, store, sys.stdout.write)
    return 1 if counts.get("failed") else 0


def cmd_status(args: argparse.Namespace) -> int:
    from kdbench.store import Store

    return _print_status(grid_from_args(args).expand(), Store(args.out))


def cmd_list(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    import_user_modules(args.imports)
    if args.what == "methods":
        rows = []
        for name in METHODS.list(args.pattern) + METHODS.composed(args.pattern):  # then at+kd, ...
            cls = METHODS.get(name)
            doc = (cls.__doc__ or "").strip().splitlines()
            cfg = cls.Config()
            opts = ", ".join(f"{k}={v}" for k, v in vars(cfg).items())
            rows.append([name, cls.version, doc[0] if doc else "", opts])
        out = tabulate(rows, headers=["method", "ver", "description", "defaults"])
        failed = METHODS.failed_plugins
        if failed:
            out += "\n" + "\n".join(f"plugin {k!r} failed to load: {v}" for k, v in failed.items())
    elif args.what == "models":
        rows = [[n, MODELS.meta(n).get("family", ""), "yes" if MODELS.meta(n).get("lightweight") else ""]
                for n in MODELS.list(args.pattern)]
        out = tabulate(rows, headers=["model", "family", "lightweight lr"]) + \
            "\nalso: timm:<name> (any timm model) and tv:<name> (any torchvision classification model)"
    elif args.what == "datasets":
        from kdbench.datasets import get_dataset

        rows = []
        for n in DATASETS.list(args.pattern):
            ds = get_dataset(n)
            rows.append([n, ds.describe(), "yes" if ds.can_download else "", ds.layout.strip().splitlines()[0]])
        out = tabulate(rows, headers=["dataset", "shape", "--download", "layout"]) + \
            "\nalso: imagefolder:<path> (class sub-folders)"
    elif args.what == "pairs":
        rows = [[name, len(p), ", ".join(f"{t}->{s}" for t, s in p)] for name, p in PAIR_PRESETS.items()]
        out = tabulate(rows, headers=["preset", "pairs", "teacher->student"], maxcolwidths=[None, None, 100])
    elif args.what == "teachers":
        from kdbench.store import Store
        from kdbench.teachers.cache import catalogue

        rows = catalogue(list(Store(args.out).iter_results()))
        out = tabulate([[r["dataset"], r["arch"], r["seed"], r["epochs"], f"{r['top1']:.2f}", r["key"], r["model"]]
                        for r in rows], headers=["dataset", "teacher", "seed", "epochs", "top1", "key", "weights"])
    else:
        out = "\n".join(RUNNERS.list(args.pattern))
    sys.stdout.write(out + "\n")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from kdbench.reports.leaderboard import probe_target
    from kdbench.reports.report import Options, build_published_report, check_outside, from_folder, render, write_plots

    if probe_target(args.metric):
        from kdbench.datasets import get_dataset

        get_dataset(probe_target(args.metric))  # an unknown target: "did you mean"

    opts = Options(dataset=args.dataset, metric=args.metric, baseline=args.baseline, ari_ref=args.ari_ref,
                   compare=args.compare, sort=args.sort, alpha=args.alpha,
                   plots=args.format == "html" or bool(args.plots))
    if args.table:
        report = build_published_report(args.table, opts)
    else:
        check_outside(args.out, {"--output": args.output, "--plots": args.plots})
        report = from_folder(args.out, opts)
    text = render(report, args.format, color=sys.stdout.isatty() and not args.output)
    if args.plots:
        write_plots(report, Path(args.plots))
    if args.output:
        try:
            Path(args.output).write_text(text)
        except OSError as exc:
            raise GridError(f"--output {args.output} cannot be written ({exc.strerror or exc})") from None
        log.info("wrote %s", args.output)
    else:
        sys.stdout.write(text)
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    """Probe every done student of the source dataset on each target (cached), then print
    the probe leaderboard of each target: the same table as ``report --metric probe:T``."""
    import math

    from kdbench.datasets import get_dataset, load_dataset
    from kdbench.probe import ProbeConfig, probe_key, probe_store
    from kdbench.reports.render import render_tables
    from kdbench.reports.report import Options, from_folder
    from kdbench.store import Store
    from kdbench.train import Env

    import_user_modules(args.imports)
    targets = list(dict.fromkeys(t.strip() for item in args.target for t in item.split(",") if t.strip()))
    if not targets:
        raise GridError("--target: name at least one dataset to probe on, e.g. --target stl10")
    for name in targets:
        get_dataset(name)  # unknown: "did you mean", before anything is loaded
    defaults = ProbeConfig()
    cfg = ProbeConfig(weight_decay=defaults.weight_decay if args.weight_decay is None else args.weight_decay,
                      max_iter=defaults.max_iter if args.max_iter is None else args.max_iter)
    if not (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise GridError(f"--weight-decay must be a finite number >= 0, got {cfg.weight_decay}")
    if cfg.max_iter < 1:
        raise GridError(f"--max-iter must be >= 1, got {cfg.max_iter}")
    device = Env(device=args.device).torch_device
    store = Store(args.out)
    held = sorted({r["dataset"] for r in store.iter_results() if r.get("status") == "done" and r.get("dataset")})
    if args.dataset is not None:
        get_dataset(args.dataset)
    if not held or (args.dataset is not None and args.dataset not in held):
        what = f"on dataset {args.dataset} " if args.dataset else ""
        holds = f"; it holds done runs on: {', '.join(held)}" if held else ""
        raise GridError(f"no done runs {what}in {store.root}{holds}; train them first with "
                        f"`kdbench run{f' --dataset {args.dataset}' if args.dataset else ''} --out {args.out}`")
    if args.dataset is None and len(held) > 1:
        raise GridError(f"{store.root} holds done runs on several datasets ({', '.join(held)}): choose the source "
                        f"with --dataset")
    dataset = args.dataset or held[0]
    color = sys.stdout.isatty()
    for name in targets:
        target = load_dataset(name, args.data_root)  # missing or malformed: the dataset's own DatasetError
        try:
            rows = probe_store(store.root, dataset, target, cfg, device)
        except OSError as exc:
            raise GridError(f"cannot write the probe results into {store.root} ({exc.strerror or exc})") from None
        log.info("probe %s -> %s: %d run(s) probed", dataset, name, len(rows))
        report = from_folder(store.root, Options(dataset=dataset, metric=f"probe:{name}@{probe_key(name, cfg)}"))
        notes = "".join(f"{n}\n" for n in report.notes)
        sys.stdout.write(render_tables([s.table for s in report.sections], color=color) + "\n" + notes)
    return 0


COMMANDS = {"run": cmd_run, "list": cmd_list, "status": cmd_status, "report": cmd_report, "probe": cmd_probe}


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = merge_global_options(parser.parse_args(with_default_command(list(sys.argv[1:] if argv is None else argv))))
    setup_logging(args.verbose, args.quiet)
    try:
        return COMMANDS[args.command](args)
    except (GridError, UnknownNameError, DatasetError, ValueError, ImportError, FileNotFoundError,
            SlurmUnavailable) as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        log.warning("interrupted: finished runs are kept; re-run the same command to resume")
        return 130
