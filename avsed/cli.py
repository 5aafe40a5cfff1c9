"""The `avsed` command: synth, serve-videos, extract, status, migrate-store, train, paper, evaluate, report, serve,
detect, demo.

Each subcommand parses flags and calls one plain function of the packages; imports are lazy so that
`avsed status` does not pay for torch and Prefect. Settings come from a config file (`--config`), then the
flags, then `--set a.b=value` (repeatable), merged key by key (avsed.core.config). Expected errors (`AvsedError`: a bad
setting, a missing store, a store another run writes, ...) print one line and exit 2; `--debug` shows the
traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from training.run_dirs import seeds_argument  # light: no torch

if TYPE_CHECKING:  # pragma: no cover
    from avsed.core.errors import AvsedError


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _floats(value: str) -> list[float]:
    """argparse `type=` for comma separated numbers (a bad one is argparse's one-line usage error)."""
    try:
        out = [float(v) for v in _csv(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: give comma separated numbers, e.g. 0.25,0.5") from None
    if not out:
        raise argparse.ArgumentTypeError("give at least one number")
    return out


def _learned_modes(value: str) -> list[str]:
    """argparse `type=` for `paper --learned`: gate modes, comma separated, or none."""
    modes = list(_csv(value))
    if modes == ["none"]:
        return modes
    bad = [m for m in modes if m not in ("clip", "frame")]
    if bad or not modes:
        raise argparse.ArgumentTypeError(f"{value!r}: give clip, frame, clip,frame or none")
    return modes


def cmd_synth(args: argparse.Namespace) -> int:
    from avsed.synthetic.dataset import SynthConfig, make_synthetic_dataset
    from avsed.synthetic.failures import ALL_FAILURE_CASES

    cases = ALL_FAILURE_CASES if args.failure_cases == "all" else _csv(args.failure_cases or "")
    summary = make_synthetic_dataset(args.out, SynthConfig(clips=args.clips, seed=args.seed,
                                                           missing_fraction=args.missing_fraction,
                                                           failure_cases=tuple(cases)))
    print(summary)
    return 0


def cmd_serve_videos(args: argparse.Namespace) -> int:
    from avsed.synthetic.video_host import serve_videos

    print(f"serving {args.directory} on http://{args.host}:{args.port}/<youtube_id>.mp4 (Ctrl-C or SIGTERM stops)")
    serve_videos(args.directory, args.port, args.host, removed_status=args.removed_status)
    return 0


SET_HELP = ("override one setting, e.g. --set download.concurrency=2 or --set model.d_model=32 (repeatable; the "
            "value is read as YAML: 32, 1e-3, true, null, [a, b]); merged key by key over --config and the flags")


def _flags(pairs: dict) -> dict:
    """The settings the flags give ({"a.b": v} -> {"a": {"b": v}}), leaving out flags not given."""
    from avsed.core.config import merge

    out: dict = {}
    for key, value in pairs.items():
        if value is None:
            continue
        node: dict = {}
        leaf = node
        parts = key.split(".")
        for part in parts[:-1]:
            leaf = leaf.setdefault(part, {})
        leaf[parts[-1]] = value
        out = merge(out, node)
    return out


def extract_config_from_args(args: argparse.Namespace):
    """--config, then the flags, then --set, merged key by key into one checked ExtractConfig."""
    from avsed.core.config import parse_sets
    from pipeline.extract_config import resolve_extract_config

    flags = _flags({
        "metadata": args.metadata, "audio_dir": args.audio_dir, "store": args.store,
        "features": list(_csv(args.features)) if args.features else None,
        "recheck_missing": True if args.recheck_missing else None,
        "allow_random_weights": True if args.allow_random_weights else None,
        "frame_size": args.frame_size, "batch_clips": args.batch_clips,
        "max_clips_in_flight": args.max_clips_in_flight, "decode_workers": args.decode_workers,
        "recheck_after_days": args.recheck_after_days, "shards_in_flight": args.shards_in_flight,
        "download.url_template": args.url_template, "download.concurrency": args.concurrency,
        "download.keep_videos": True if args.keep_videos else None,
    })
    return resolve_extract_config(flags, args.config, parse_sets(args.set), config_name="flags")


def cmd_extract(args: argparse.Namespace) -> int:
    cfg = extract_config_from_args(args)
    if args.engine == "plain":
        import threading

        from pipeline.extract import ExtractionInterrupted, run_extraction, sigint_stops

        stop = threading.Event()
        try:
            with sigint_stops(stop):  # the first Ctrl-C writes what is in hand; its one line is printed then
                report = run_extraction(cfg, progress=not args.json, stop=stop).to_dict()
        except ExtractionInterrupted:
            return 130
    else:
        from flows import in_process_defaults

        in_process_defaults()
        from flows.extract import extract_features
        from pipeline.extract import ExtractionInterrupted

        try:
            report = extract_features(config=cfg, dask_address=args.dask_address)
        except ExtractionInterrupted:
            return 130  # its one line was printed by the first Ctrl-C
    if args.json:
        print(json.dumps(report))
    else:
        _print_report(report)
    return 0


def _print_report(report: dict) -> None:
    print(f"clips {report['clips']} ({report['new_clips']} new); audio features computed {report['audio_computed']}, "
          f"audio failures {report['audio_failed']}")
    print(f"videos downloaded {report['videos_downloaded']}, missing {report['videos_missing']}, "
          f"failed (retried next run) {report['videos_failed']}, corrupt {report['videos_corrupt']}, "
          f"vanished since cached {report['newly_missing_cached']}")
    if report.get("videos_not_attempted"):
        print(f"downloads not attempted (the host kept refusing; tried again next run): {report['videos_not_attempted']}")
    print(f"video features computed {report['video_computed']}; {len(report['manifest_problems'])} manifest problems; "
          f"{len(report.get('label_changes', []))} label changes; {report['seconds']:.1f} s")
    if report.get("stage_seconds"):
        print("seconds per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in report["stage_seconds"].items()))
    for p in report["manifest_problems"][:20]:
        print(f"  manifest problem: {p}")
    for c in report.get("label_changes", [])[:20]:
        print(f"  label change: {c}")


def cmd_status(args: argparse.Namespace) -> int:
    from pipeline.status import format_status, store_status

    status = store_status(args.store)
    print(json.dumps(status) if args.json else format_status(status))
    return 0


def cmd_migrate_store(args: argparse.Namespace) -> int:
    from pipeline.store_migrate import migrate_store

    report = migrate_store(args.store, clips_per_shard=args.clips_per_shard)
    print(f"{report.store}: migrated to format 2 ({report.clips} clips; rows per feature {report.features}); "
          f"the format-1 store is kept as {report.backup} (delete it once you have checked the new one)")
    return 0


def train_config_from_args(args: argparse.Namespace, dirs: list[Path]):
    """--config (or the paper's defaults), then --seed / --steps / --device, then --set, merged key by key; None
    resumes with the checkpoints' own config when nothing is given that would change it."""
    from avsed.core.config import parse_sets
    from training.run_dirs import CHECKPOINT
    from training.config import resolve_train_config

    sets = parse_sets(getattr(args, "set", None))
    resuming = getattr(args, "resume", False) and all((d / CHECKPOINT).exists() for d in dirs)
    if resuming and not args.config and args.seed is None and args.steps is None and not args.device and not sets:
        return None
    # --steps N: a run of N steps (one "epoch" of N batches); the lr decay period is unchanged.
    flags = _flags({"seed": args.seed, "epochs": 1 if args.steps is not None else None,
                    "steps_per_epoch": args.steps, "device": args.device or None})
    return resolve_train_config(flags, args.config, sets, config_name="flags")


def cmd_train(args: argparse.Namespace) -> int:
    from training.run_dirs import CHECKPOINT, parse_seeds, seed_dir

    seeds = parse_seeds(args.seeds) if isinstance(args.seeds, str) else args.seeds
    if seeds and args.seed is not None:
        from avsed.core.config import ConfigError

        raise ConfigError("give --seed or --seeds, not both")
    dirs = [seed_dir(args.out, s) for s in seeds] if seeds else [Path(args.out)]
    config = train_config_from_args(args, dirs)
    if args.engine == "prefect":
        from training.config import TrainConfig

        if config is None:  # resuming unchanged: the runs' own (saved) config
            config = TrainConfig.load(dirs[0] / "config.yaml")
        from flows import in_process_defaults

        in_process_defaults()
        from flows.train import train_flow

        if args.accept_changed_store:
            from avsed.core.config import ConfigError

            raise ConfigError("--accept-changed-store works with --engine plain; resume there once, then go on")
        results = train_flow(args.store, args.out, config=config, seeds=seeds or None)
    else:
        from evaluation.validation import VALIDATOR
        from training.train import train, train_group

        accept = args.accept_changed_store
        if seeds:
            trained = train_group(args.store, config, {s: seed_dir(args.out, s) for s in seeds}, resume=args.resume,
                                  accept_changed_store=accept, validator=VALIDATOR)
        else:
            trained = [train(args.store, config, args.out, resume=args.resume, accept_changed_store=accept,
                             validator=VALIDATOR)]
        results = [{"out_dir": str(r.out_dir), "steps": r.steps, "trained_steps": r.trained_steps,
                    "samples_per_second": r.samples_per_second, "last_losses": r.last_losses} for r in trained]
    for r in results:
        losses = ", ".join(f"{k} {v:.4f}" for k, v in r["last_losses"].items())
        print(f"{r['out_dir']}: {r['steps']} steps ({r['trained_steps']} trained now, "
              f"{r['samples_per_second']:.1f} samples/s per seed); last losses: {losses}")
    print(f"checkpoints: {', '.join(str(Path(r['out_dir']) / CHECKPOINT) for r in results)}")
    return 0


def cmd_paper(args: argparse.Namespace) -> int:
    """The grid of the paper's Tables 5-8, trained, evaluated and tabulated."""
    from avsed.core.config import parse_sets
    from training.config import resolve_train_config

    flags = _flags({"epochs": 1 if args.steps is not None else None, "steps_per_epoch": args.steps,
                    "device": args.device or None})
    base = resolve_train_config(flags, args.config, parse_sets(args.set), config_name="flags")
    options = dict(store=args.store, out_dir=args.out, seeds=list(args.seeds),
                   architectures=[a.strip() for a in args.architectures.split(",") if a.strip()],
                   train_audio_weights=list(args.train_audio_weights),
                   features=[f for f in _csv(args.features) if f != "none"] if args.features else None,
                   plots=not args.no_plots, device=args.device or "auto",
                   inference_audio_weights=list(args.inference_audio_weights),
                   learned_modes=[] if args.learned == ["none"] else list(args.learned))
    if args.work_pool:
        import os

        from avsed.core.config import ConfigError

        if args.engine != "prefect" or not os.environ.get("PREFECT_API_URL"):
            raise ConfigError("--work-pool: set PREFECT_API_URL to the server the pool's workers poll (and keep "
                              "--engine prefect): the grid submits its units there")
        options.update(work_pool=args.work_pool, deployment=args.deployment, in_flight=args.in_flight,
                       evaluate_pool=args.evaluate_pool)
    if args.engine == "prefect":
        from flows import in_process_defaults

        in_process_defaults()
        from flows.paper import paper_flow

        summary = paper_flow(**options, base=base, group_size=args.group_size)
    else:
        from grid.run import run_paper, summary_of

        summary = summary_of(run_paper(**options, base=base, group_size=args.group_size))
    print(f"trained {summary['trained_runs']} runs, evaluated {summary['evaluated_runs']} runs "
          f"({len(summary['entries'])} models x {len(options['seeds'])} seeds)")
    print(Path(summary["tables"]["markdown"]).read_text())
    for line in summary["failed"]:
        print(f"failed: {line}")
    return 1 if summary["failed"] else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from evaluation.commands import run_evaluate

    return run_evaluate(args)


def cmd_report(args: argparse.Namespace) -> int:
    from evaluation.commands import run_report

    return run_report(args)


def cmd_serve(args: argparse.Namespace) -> int:
    from flows.serve import serve_deployments

    serve_deployments(name=args.name, limit=args.limit)
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    from detection.detect import detect
    from pipeline.download import DownloadConfig

    download = DownloadConfig(url_template=args.url_template) if args.url_template else None
    summary = detect(args.model, args.inputs, args.out, hop_seconds=args.hop, threshold=args.threshold,
                     batch_windows=args.batch_windows, download=download, plots=not args.no_plots,
                     progress=not args.no_progress, echo=lambda line: print(line, flush=True))
    print(f"{len(summary.recordings)} recording(s) processed, {len(summary.failures)} skipped, "
          f"{sum(len(r.events) for r in summary.recordings)} event(s) in {summary.out_dir / 'detections.tsv'} "
          f"({summary.seconds:.1f} s)")
    if summary.exit_code:
        print("avsed detect: error: no input could be processed (see the lines above)", file=sys.stderr)
    return summary.exit_code


def cmd_demo(args: argparse.Namespace) -> int:
    from avsed.demo import run_demo

    return run_demo(out_dir=Path(args.out), quick=args.quick)


def _parser_synth(sub) -> None:
    s = sub.add_parser("synth", help="write a small DESED-shaped synthetic data set")
    s.add_argument("out", help="output folder (metadata/, audio/, videos/, truth/)")
    s.add_argument("--clips", type=int, default=120, help="number of clips over all partitions")
    s.add_argument("--seed", type=int, default=0, help="random seed (the set is a pure function of its settings)")
    s.add_argument("--missing-fraction", type=float, default=0.155,
                   help="share of YouTube clips whose video is gone (DESED: about 15.5%%)")
    s.add_argument("--failure-cases", help="'all' or comma separated names: add clips that exercise the extraction's "
                                           "failure paths (corrupt video, 503/429 once, unreadable audio, ...); their "
                                           "expected outcomes go to truth/failures.tsv")
    s.set_defaults(func=cmd_synth)


def _parser_serve_videos(sub) -> None:
    s = sub.add_parser("serve-videos", help="serve DIR/<youtube_id>.mp4 on 127.0.0.1 (absent ids answer 404; "
                                            "DIR/answers.json scripts per-id answers, see avsed.synthetic.video_host)")
    s.add_argument("directory", help="folder of <youtube_id>.mp4 files")
    s.add_argument("--port", type=int, default=8765, help="TCP port (default 8765)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1 only)")
    s.add_argument("--removed-status", type=int, default=404,
                   help="HTTP status for ids listed in DIR/removed.txt (410 plays a removed video)")
    s.set_defaults(func=cmd_serve_videos)


def _parser_extract(sub) -> None:
    s = sub.add_parser("extract", help="extract features into a store (the extract-features flow in this process)")
    s.add_argument("--metadata", help="DESED metadata folder (train/weak.tsv, validation/validation.tsv, ...)")
    s.add_argument("--audio-dir", help="DESED audio folder (train/weak/, validation/, ...)")
    s.add_argument("--store", help="the feature store to create or grow (features.zarr)")
    s.add_argument("--features", help="comma separated: logmel,openl3,vgg16,tce (default logmel)")
    s.add_argument("--url-template", help="video URL with a {youtube_id} field (default: YouTube's watch URL)")
    s.add_argument("--config", help="YAML file of extraction settings (ExtractConfig: download:, extractor_configs:, "
                                    "...); the flags and --set override it key by key")
    s.add_argument("--recheck-missing", action="store_true", help="retry videos recorded as permanently missing")
    s.add_argument("--recheck-after-days", type=float,
                   help="re-check cached clips' videos last checked more than this many days ago (default 30)")
    s.add_argument("--allow-random-weights", action="store_true",
                   help="use seeded random weights when a weights file is absent (recorded as weights: random)")
    s.add_argument("--keep-videos", action="store_true", help="keep downloaded videos (default: deleted once written)")
    s.add_argument("--concurrency", type=int, help="downloads at once for the whole run (default 4)")
    s.add_argument("--frame-size", type=int, help="decoded frame size in pixels (default 224; recorded in provenance)")
    s.add_argument("--batch-clips", type=int, help="clips per upload batch of the embedding worker (default 16)")
    s.add_argument("--max-clips-in-flight", type=int,
                   help="decoded clips in memory at once (default: a quarter of the available memory)")
    s.add_argument("--decode-workers", type=int, help="ffmpeg decoder processes (default: the machine's cores)")
    s.add_argument("--shards-in-flight", type=int,
                   help="Prefect engine: shards downloaded or embedded at once (default 2; with Dask, its workers)")
    s.add_argument("--engine", choices=("prefect", "plain"), default="prefect",
                   help="prefect: the extract-features flow in-process; plain: the same pipeline without Prefect")
    s.add_argument("--dask-address", help="tcp://host:port of a dask.distributed scheduler to run shard tasks on")
    s.add_argument("--json", action="store_true", help="print the run's report as one JSON line")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help=SET_HELP)
    s.set_defaults(func=cmd_extract)


def _parser_status(sub) -> None:
    s = sub.add_parser("status", help="what a store holds (reads only: no lock, works on a read-only store)")
    s.add_argument("store", help="the feature store (features.zarr)")
    s.add_argument("--json", action="store_true", help="print the status as JSON")
    s.set_defaults(func=cmd_status)


def _parser_migrate_store(sub) -> None:
    s = sub.add_parser("migrate-store", help="rewrite a store of an earlier format (1) in the current one (2)")
    s.add_argument("store", help="the feature store; the old one is kept as <store>.format1")
    s.add_argument("--clips-per-shard", type=int, default=128, help="clips per shard file of the new store")
    s.set_defaults(func=cmd_migrate_store)


def _parser_train(sub) -> None:
    s = sub.add_parser("train", help="train a model (or several seeds of it together) on a cached store")
    s.add_argument("--store", required=True, help="the feature store (features.zarr) to train on")
    s.add_argument("--config", help="YAML training config (configs/*.yaml); default: the paper's settings")
    s.add_argument("--out", required=True, help="run directory; with --seeds, one <out>/seed<k> per seed")
    s.add_argument("--resume", action="store_true",
                   help="continue from the checkpoints in --out (bit-exact); finished seeds are not trained again")
    s.add_argument("--accept-changed-store", action="store_true",
                   help="with --resume: continue even though the store's training data changed since the checkpoint "
                        "(clips added, videos found, labels corrected); recorded in each run's log.jsonl")
    s.add_argument("--seed", type=int, help="the seed of a single run (overrides the config's)")
    s.add_argument("--seeds", type=seeds_argument,
                   help="train these seeds together in one process: a count (20: seeds 0-19, as `avsed paper "
                        "--seeds 20`) or seeds like 0-19, 0,3,5-7, 5-5 (store read once, models stacked); each "
                        "writes its own run directory")
    s.add_argument("--steps", type=int, help="train N steps in all (one epoch of N batches) instead of 100 x 250")
    s.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    s.add_argument("--engine", choices=("plain", "prefect"), default="plain",
                   help="plain: train in this process (default); prefect: the `train` flow in this process (task "
                        "and artifacts in Prefect; it always continues from checkpoints in --out)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help=SET_HELP)
    s.set_defaults(func=cmd_train)


def _parser_paper(sub) -> None:
    s = sub.add_parser("paper", help="train, evaluate and tabulate the paper's Tables 5-8 on a store")
    s.add_argument("--store", required=True, help="the feature store; models need the visual features it has")
    s.add_argument("--out", required=True, help="output folder: runs/<model>/seed<k>/ and tables.md, table<N>.csv/png")
    s.add_argument("--seeds", default="20", type=seeds_argument,
                   help="a count (20: seeds 0-19, the paper's; as `avsed train --seeds 20`) or seeds like 0-4, "
                        "0,2, 5-5")
    s.add_argument("--architectures", default="transformer,conformer", help="comma separated")
    s.add_argument("--features", help="visual features to use (default vgg16,openl3,tce; absent ones are "
                                      "skipped; none: the audio-only models alone)")
    s.add_argument("--train-audio-weights", default="0.75", type=_floats,
                   help="training audio weights of the fixed-weight models, comma separated; with several, each "
                        "row shows the one with the best validation EBF1 (the paper tried 0.25,0.5,0.75,0.875)")
    s.add_argument("--inference-audio-weights", default="0.25,0.5,0.75,0.875", type=_floats,
                   help="audio weights a multi-encoder model chooses from on validation EBF1 (paper 3.2.2)")
    s.add_argument("--config", help="YAML of settings shared by every model (e.g. toy sizes); each model sets "
                                    "its own architecture, encoders and interpolation weights")
    s.add_argument("--steps", type=int, help="N steps per run instead of the paper's 100 x 250")
    s.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    s.add_argument("--learned", default="clip", type=_learned_modes,
                   help="beyond the paper: also train every bi- and tri-encoder with learned interpolation "
                        "weights per clip (default), per frame, both (clip,frame) or none")
    s.add_argument("--no-plots", action="store_true", help="skip the per-run evaluation plots (tables still get PNGs)")
    s.add_argument("--engine", choices=("prefect", "plain"), default="prefect",
                   help="prefect: the `paper` flow in-process; plain: the same steps without Prefect")
    s.add_argument("--work-pool", help="submit each seed group's training, then its runs' evaluation, to this "
                                       "Prefect work pool's train/evaluate deployments (workers on the GPUs run them; "
                                       "needs PREFECT_API_URL); default: run them in this process")
    s.add_argument("--deployment", help="with --work-pool: the deployment name, where the pool has several")
    s.add_argument("--evaluate-pool", help="with --work-pool: evaluate the runs on this pool's `evaluate` "
                                           "deployment instead (e.g. a CPU pool)")
    s.add_argument("--in-flight", type=int, default=16, help="with --work-pool: units submitted at once at most")
    s.add_argument("--group-size", type=int, help="seeds of a model trained together in one unit (default: all)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help=SET_HELP)
    s.set_defaults(func=cmd_paper)


def _parser_evaluate(sub) -> None:
    s = sub.add_parser("evaluate", help="tune on validation, report on eval")
    s.add_argument("--checkpoint", required=True, help="run directory or checkpoint file")
    s.add_argument("--store", required=True, help="the feature store the run was trained on")
    s.add_argument("--audio-weight", type=float, help="force the audio interpolation weight (1 ignores video)")
    s.add_argument("--split-by-availability", action="store_true",
                   help="also score eval clips with and without video, and with video forced off (paper Table 7)")
    s.add_argument("--tune-audio-weight", action="store_true",
                   help="choose the audio weight among 0.25, 0.5, 0.75, 0.875 by validation EBF1 (paper 3.2.2)")
    s.add_argument("--teacher", action="store_true",
                   help="score the mean teacher instead of the student (the paper scores the student); "
                        "recorded in result.json and in the model name")
    s.add_argument("--video-truth", help="what each clip's video shows (a TSV of clip_id and kind, as a synthetic set's truth/videos.tsv): a "
                                         "learned-weight model's weights are then summarised per kind (content, "
                                         "still, black, absent)")
    s.add_argument("--out", help="output folder (default <run>/evaluation)")
    s.set_defaults(func=cmd_evaluate)


def _parser_report(sub) -> None:
    s = sub.add_parser("report", help="aggregate evaluated runs (seeds) into mean ± std tables and plots")
    s.add_argument("runs", nargs="+", help="run directories, their evaluation folders or result.json files")
    s.add_argument("--out", default="report", help="output folder (report.md, *.csv, *.png)")
    s.add_argument("--baseline", help="the model every other one is compared with in the split differences "
                                      "(default: the audio-only model of the same architecture)")
    s.set_defaults(func=cmd_report)


def _parser_serve(sub) -> None:
    s = sub.add_parser("serve", help="serve the Prefect deployments extract-features/<name>, train/<name> and "
                                     "paper/<name> from this process (needs PREFECT_API_URL; see also prefect.yaml)")
    s.add_argument("--name", default="default", help="the deployments' name (default: default)")
    s.add_argument("--limit", type=int, default=None, help="flow runs at once (default: no limit)")
    s.set_defaults(func=cmd_serve)


def _parser_detect(sub) -> None:
    s = sub.add_parser("detect", help="sound events in your own recordings (audio or video files, folders, YouTube "
                                      "URLs or ids) with a trained, evaluated run")
    s.add_argument("inputs", nargs="+", metavar="INPUT", help="audio (wav, flac, mp3, ogg) or video (mp4, webm, mkv, "
                                                             "mov) files, folders of them, YouTube URLs or ids")
    s.add_argument("--model", required=True, help="a training run directory (checkpoint.pt; `avsed evaluate` "
                                                 "run on it gives the tuned post-processing)")
    s.add_argument("--out", required=True, help="output folder: detections.tsv, <name>.json, <name>.png")
    s.add_argument("--hop", type=float, default=5.0, help="seconds between 10-s windows (default 5)")
    s.add_argument("--threshold", type=float, help="one threshold for every class instead of the tuned ones")
    s.add_argument("--batch-windows", type=int, default=16, help="windows per pass through the model (default 16)")
    s.add_argument("--url-template", help="video URL with {youtube_id} for ids and URLs (default YouTube's)")
    s.add_argument("--no-plots", action="store_true", help="no PNG timelines")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_detect)


def _parser_demo(sub) -> None:
    s = sub.add_parser("demo", help="the whole mission on a synthetic data set")
    s.add_argument("--out", default="demo-out", help="output folder (default demo-out)")
    s.add_argument("--quick", action="store_true", help="tiny sizes, for tests")
    s.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avsed", description=__doc__.splitlines()[0])
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error (expected errors are "
                                                        "one line: what, which file or clip, what to do)")
    sub = p.add_subparsers(dest="command", required=True)
    # one function per command, in the order `avsed --help` lists them
    for add in (_parser_synth, _parser_serve_videos, _parser_extract, _parser_status, _parser_migrate_store,
                _parser_train, _parser_paper, _parser_evaluate, _parser_report, _parser_serve, _parser_detect,
                _parser_demo):
        add(sub)
    for subparser in sub.choices.values():  # `avsed <command> ... --debug` too
        subparser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                               help="show the full traceback of an error")
    return p


def _expected(exc: BaseException) -> AvsedError | None:
    """The user-fixable refusal behind `exc` (itself or a cause, e.g. re-raised by a Prefect task), if any."""
    from avsed.core.errors import AvsedError

    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, AvsedError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"avsed {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - expected refusals become one line; bugs keep their traceback
        refusal = _expected(exc)
        if refusal is None or getattr(args, "debug", False):
            raise
        message = " ".join(str(refusal).split())
        print(f"avsed {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
