"""`pc2` command line: curate, synth, bench, search, and the service commands (serve, worker, db, keys)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

EXIT_INPUT = 2  # a user-fixable input problem: one line on stderr, nothing written


class InputProblem(Exception):
    """Raised for bad input found by the CLI itself (missing files and the like)."""


def load_config(path: str | None, epochs: int | None, sets: list[str], device: str | None = None):
    from pc2.models.config import PC2Config, parse_overrides

    data: dict = {}
    if path:
        if not Path(path).is_file():
            raise InputProblem(f"config file not found: {path}")
        data = PC2Config.from_file(path).to_dict()
    data.update(parse_overrides(sets))
    if epochs is not None:
        data["epochs"] = epochs
        data.setdefault("warmup_epochs", min(PC2Config().warmup_epochs, epochs))
        data["warmup_epochs"] = min(data["warmup_epochs"], epochs)
    if device:
        data["device"] = device
    return PC2Config.from_dict(data)


class TqdmProgress:
    """Engine progress -> one tqdm bar over the whole job, with phase, epoch and losses in the postfix."""

    def __init__(self, disable: bool = False):
        from tqdm import tqdm

        self.bar = tqdm(total=1000, unit="‰", disable=disable, dynamic_ncols=True, bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")
        self.last = 0

    def __call__(self, p) -> None:
        n = int(p.fraction * 1000)
        if n > self.last:
            self.bar.update(n - self.last)
            self.last = n
        self.bar.set_description(f"{p.phase} {p.epoch}/{p.epochs}", refresh=False)
        post = {k: f"{v:.3f}" for k, v in p.losses.items()}
        if p.split:
            post["clean"] = p.split.get("n_clean")
        self.bar.set_postfix(post, refresh=False)

    def close(self) -> None:
        self.bar.close()


# --- curate ----------------------------------------------------------------------------------------
def cmd_curate(args) -> int:
    from pc2.models import ingest
    from pc2.models.engine import curate
    from pc2.models.results import annotate, write_parquet
    import pyarrow.parquet as pq

    out = Path(args.output)
    if args.precomp:
        if not Path(args.precomp).is_dir():
            raise InputProblem(f"precomputed directory not found: {args.precomp}")
    else:
        if args.manifest is None:
            raise InputProblem("give a MANIFEST (or --precomp DIR)")
        for p in [args.manifest, *(args.features or [])]:
            if not Path(p).is_file():
                raise InputProblem(f"file not found: {p}")
    if out.suffix != ".parquet":
        raise InputProblem(f"output must end in .parquet: {out}")
    cfg = load_config(args.config, args.epochs, args.set, args.device)
    workdir = Path(args.workdir) if args.workdir else out.with_name(out.stem + ".pc2")
    t0 = time.time()
    prepared_dir = workdir / "prepared"
    if not (prepared_dir / "corpus.json").exists():
        kwargs = {"tokenizer": args.tokenizer, "vocab_size": args.vocab_size}
        if not args.quiet and sys.stderr.isatty():
            print(f"validating and tokenizing into {prepared_dir} ...", file=sys.stderr)
        if args.precomp:
            ingest.prepare_precomp(args.precomp, args.split, prepared_dir, **kwargs)
        else:
            ingest.prepare(args.manifest, args.features or [], prepared_dir, **kwargs)
    prepared = ingest.load_prepared(prepared_dir)
    bar = TqdmProgress(disable=args.quiet)
    try:
        result = curate(prepared.corpus, cfg, workdir=workdir / "train", progress=bar)
    finally:
        bar.close()
    from pc2.models.search import DEFAULT_DUPLICATE_THRESHOLD, build_job_indexes, duplicate_groups

    dup_of = duplicate_groups(prepared.corpus, getattr(args, "dedup_threshold", None) or DEFAULT_DUPLICATE_THRESHOLD)
    result.metrics["n_duplicates"] = int((dup_of >= 0).sum())
    build_job_indexes(workdir / "train", noisy=result.noisy)  # `pc2 search` reads these
    manifest = pq.read_table(prepared_dir / "manifest.parquet")
    write_parquet(annotate(manifest, prepared.corpus, result, duplicate_of=dup_of), out)
    m = result.metrics
    summary = {
        "pairs": m["n_pairs"],
        "clean": m["n_clean"],
        "noisy": m["n_noisy"],
        "estimated_noise_rate": round(m["noise_rate"], 4),
        "pseudo_captioned": m["n_pseudo_captioned"],
        "duplicates": m["n_duplicates"],
        "epochs": m["epochs"],
        "resumed": m["resumed"],
        "seconds": round(time.time() - t0, 1),
        "output": str(out),
        "job_dir": str(workdir),
    }
    print(json.dumps(summary) if args.json else "\n".join(f"{k:>22}: {v}" for k, v in summary.items()))
    return 0


def cmd_synth(args) -> int:
    from pc2.models import synth
    from tqdm import tqdm

    bar = tqdm(total=args.pairs, unit="pair", disable=args.quiet)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    info = synth.generate(
        args.output, n_pairs=args.pairs, noise_rate=args.noise, regions=args.regions, dim=args.dim,
        n_test=args.test, captions_per_image=args.captions_per_image, seed=args.seed, dtype=args.dtype,
        progress=progress,
    )
    bar.close()
    counts = ", ".join(f"{k} {v}" for k, v in info.noise_counts.items())
    print(f"wrote {args.output}: {info.n_pairs} pairs over {info.n_images} images ({counts}), {info.n_test} clean test pairs, {info.seconds:.1f}s")
    return 0


def cmd_bench(args) -> int:
    from pc2.models import bench

    return bench.main(args)


def cmd_search(args) -> int:
    from pc2.models import search

    try:
        hits = search.search_job_dir(
            args.job_dir, text=args.text, pair_id=args.pair_id, direction=args.direction, k=args.k, label=args.label
        )
    except search.SearchError as e:  # a query the user can fix: one line, exit 2
        raise InputProblem(str(e)) from None
    for h in hits:
        print(json.dumps(h, ensure_ascii=False))
    return 0


def _service(name: str):
    def run(args) -> int:
        from pc2.service import cli_commands

        return getattr(cli_commands, name)(args.rest)

    return run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pc2", description="PC² Curate: clean noisy image-text pair corpora.")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("curate", help="run the whole curation job locally, no server", description="Validate, train PC², score every pair and write the annotated Parquet export.")
    c.add_argument("manifest", nargs="?", help="pair manifest: .parquet, .jsonl or .csv (optionally .gz)")
    c.add_argument("--features", nargs="+", metavar="F.npy", help="image feature shard(s): [N,R,D] or [N,D], float16/32")
    c.add_argument("--precomp", metavar="DIR", help="NCR / Noise-of-Web precomputed directory instead of a manifest")
    c.add_argument("--split", default="train", help="split name inside --precomp (default: train)")
    c.add_argument("-o", "--output", required=True, help="annotated export to write (.parquet)")
    c.add_argument("--epochs", type=int, help="total epochs (default from config)")
    c.add_argument("--config", help="JSON or TOML file with engine config keys")
    c.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config key (repeatable)")
    c.add_argument("--device", help="auto | cpu | cuda")
    c.add_argument("--tokenizer", default="bpe", help="bpe (train on the captions), a tokenizer.json, or ids")
    c.add_argument("--vocab-size", type=int, default=10000)
    c.add_argument("--workdir", help="job directory for checkpoints (default: OUTPUT stem + .pc2); rerun to resume")
    c.add_argument("--dedup-threshold", type=float, default=0.97, help="cosine at which two images count as near-duplicates")
    c.add_argument("--json", action="store_true", help="print the summary as JSON")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd_curate)

    s = sub.add_parser("synth", help="generate a synthetic noisy corpus with ground truth")
    s.add_argument("output", help="directory to write")
    s.add_argument("--pairs", type=int, default=10000)
    s.add_argument("--noise", type=float, default=0.5, help="fraction of mismatched training pairs")
    s.add_argument("--regions", type=int, default=36)
    s.add_argument("--dim", type=int, default=256)
    s.add_argument("--test", type=int, default=1000, help="clean test pairs")
    s.add_argument("--captions-per-image", type=int, default=1)
    s.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_synth)

    b = sub.add_parser("bench", help="quality and speed benchmarks on synthetic corpora")
    from pc2.models.bench import add_arguments

    add_arguments(b)
    b.set_defaults(func=cmd_bench)

    q = sub.add_parser("search", help="search a local job directory (from pc2 curate)")
    q.add_argument("job_dir")
    q.add_argument("--text")
    q.add_argument("--pair-id")
    q.add_argument("--direction", default="text2image", choices=["text2image", "image2text", "image2image", "text2text"])
    q.add_argument("-k", type=int, default=10)
    q.add_argument("--label", choices=["clean", "noisy"])
    q.set_defaults(func=cmd_search)

    for name, fn, helptext in [
        ("serve", "serve", "run the API (embedded default: SQLite, embedded broker, child worker)"),
        ("worker", "worker", "run a Celery worker"),
        ("demo", "run_demo", "end-to-end demo through the real API on the embedded default"),
    ]:
        sp = sub.add_parser(name, help=helptext, add_help=False)
        sp.add_argument("rest", nargs=argparse.REMAINDER)
        sp.set_defaults(func=_service(fn))
    db = sub.add_parser("db", help="database commands")
    dbs = db.add_subparsers(dest="db_command", required=True)
    up = dbs.add_parser("upgrade", help="apply Alembic migrations", add_help=False)
    up.add_argument("rest", nargs=argparse.REMAINDER)
    up.set_defaults(func=_service("db_upgrade"))
    keys = sub.add_parser("keys", help="API keys")
    ks = keys.add_subparsers(dest="keys_command", required=True)
    kc = ks.add_parser("create", help="create a team API key (printed once)", add_help=False)
    kc.add_argument("rest", nargs=argparse.REMAINDER)
    kc.set_defaults(func=_service("keys_create"))
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "rest"):  # only the service passthrough commands take options we do not know
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.rest = extra + list(args.rest)
    from pc2.models.config import ConfigError

    user_errors: tuple[type[BaseException], ...] = (InputProblem, ConfigError, FileNotFoundError)
    try:
        from pc2.models.errors import InputError

        user_errors += (InputError,)
    except ImportError:
        pass
    try:
        return int(args.func(args) or 0)
    except user_errors as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"pc2 {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print(f"pc2 {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
