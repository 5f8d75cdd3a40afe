"""`pipeline-train DATASET --out FILE.onnx`: train a model on your own classes (a subfolder of
images per class) and write it as one .onnx file the pipeline runs with `model.weights = FILE`,
with a report beside it. Needs no torch.

The training itself is pipeline/train/."""

from __future__ import annotations

import argparse
import sys

from pipeline.cli.describe import description

PROG = "pipeline-train"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description=description(__doc__))
    ap.add_argument("dataset", metavar="DATASET",
                    help="folder with a subfolder of images per class (unlabelled/ is skipped)")
    ap.add_argument("--out", required=True, metavar="FILE.onnx", help="the model file to write")
    ap.add_argument("--name", default="", help="the model's name in results (default: FILE's stem)")
    ap.add_argument("--epochs", type=int, default=30, help="passes over the training features "
                    "(default: %(default)s)")
    ap.add_argument("--augment", type=int, default=4, metavar="N",
                    help="augmented copies of each training image (default: %(default)s)")
    ap.add_argument("--resize", choices=("crop", "squash"), default="crop",
                    help="preprocessing to train for, as the pipeline's preprocess.resize "
                         "(default: %(default)s)")
    ap.add_argument("--val-fraction", type=float, default=0.2, metavar="F",
                    help="share of each class held out for validation (default: %(default)s)")
    ap.add_argument("--split", choices=("time", "random"), default="time",
                    help="hold out each class's latest images (time) or random ones "
                         "(default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="same seed and data, same model (default: 0)")
    ap.add_argument("--threads", type=int, default=0,
                    help="threads for the model (default: every core this process may use)")
    ap.add_argument("--flip", action="store_true",
                    help="also augment with mirror images (not for a fixed camera)")
    ap.add_argument("--quiet", action="store_true", help="no progress, only the report")
    ap.add_argument("--progress-json", action="store_true",
                    help="progress as JSON lines on stderr, {\"progress\": 0..1, \"message\": ...}, "
                         "for a program to read")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from rich.console import Console

    from pipeline.errors import UserError
    from pipeline.train.run import Options, train

    err = Console(stderr=True, highlight=False)
    opts = Options(dataset=args.dataset, out=args.out, name=args.name, epochs=args.epochs,
                   augment=args.augment, resize=args.resize, val_fraction=args.val_fraction,
                   split=args.split, seed=args.seed, threads=args.threads, flip=args.flip)
    try:
        with _progress(err, args.quiet, args.progress_json) as progress:
            report = train(opts, progress)
    except UserError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing written", file=sys.stderr)
        return 130
    sys.stdout.write(report.text())
    return 0


class _progress:
    """A bar with ETA over feature extraction on a terminal; a line every 10% otherwise; with
    `as_json`, a JSON line per percent (feature extraction is most of a run: 0 to 0.9 of it)."""

    def __init__(self, console, quiet: bool, as_json: bool = False):
        self.console, self.quiet, self.as_json = console, quiet, as_json
        self.fraction = 0.0
        self.bar = None
        self.task = None
        self.total = self.done = self.said = 0

    def __enter__(self):
        from pipeline.train.run import Progress

        if self.console.is_terminal and not self.quiet and not self.as_json:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as Bar

            self.bar = Bar(TextColumn("features"), BarColumn(), MofNCompleteColumn(),
                           TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                           console=self.console, transient=False)
            self.bar.start()
        return Progress(begin=self.begin, advance=self.advance, say=self.say)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

    def begin(self, total: int) -> None:
        self.total = total
        if self.bar is not None:
            self.task = self.bar.add_task("features", total=total)
        else:
            self.say(f"features of {total} images ...")

    def advance(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.advance(self.task, n)
        elif self.as_json:
            if self.done * 100 // self.total > self.said:
                self.said = self.done * 100 // self.total
                self._json(0.9 * self.done / self.total, f"features: {self.done}/{self.total}")
        elif not self.quiet and self.done * 10 // self.total > self.said:
            self.said = self.done * 10 // self.total
            print(f"features: {self.done}/{self.total}", file=sys.stderr, flush=True)

    def say(self, text: str) -> None:
        if self.as_json:
            self._json(self.fraction, text)
        elif not self.quiet:
            if self.bar is not None:
                self.bar.console.print(text)
            else:
                print(text, file=sys.stderr, flush=True)

    def _json(self, fraction: float, text: str) -> None:
        import json

        self.fraction = fraction
        print(json.dumps({"progress": round(fraction, 3), "message": text}), file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
