"""Fine-tune the shipped model on the corrections people sent, without forgetting MNIST.

    python -m training.retrain --model digits                # make retrain MODEL=digits
    python -m training.retrain --quick --out build/rq        # seconds: a small MNIST subset (tests)

Starts from the shipped TorchScript model's weights (``--base``, default model/digits.pt) and
trains a few hundred steps. Every batch mixes replayed MNIST training images (half as MNIST
stores them, half as the service sees them, as training/train.py does) with corrections drawn
with replacement, so the corrections weigh far more than their number (``--corrections-share``
of each batch, their loss times ``--weight``) while the replay keeps the rest of what the model
knew. Batch-norm statistics stay frozen: a few hundred corrections must not move them.
Corrections come from the feedback file (serving/feedback.py); the held-out fifth
(``is_held_out``) is never trained on: the release judges the new version on it.

Writes to --out (default build/retrain/<model>): ``<model>.pt`` (TorchScript with its config
and figures inside, as training/train.py exports), ``metrics.json`` and ``card.md``: MNIST test
accuracy (stored and as served) and the corrections' accuracy, before and after.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model import preprocess as pp
from model.network import DigitNet, NetConfig, count_parameters
from serving.feedback import FeedbackStore, db_path, is_held_out
from serving.machine import describe_machine
from training.augment import augment
from training.data import DATA_DIR, load_split, served_form
from training.evaluate import evaluate
from training.train import _extra_training_images, export, fit_temperature, predict_logits, seed_everything, to_tensor

REPO = Path(__file__).resolve().parent.parent
# Models this script can fine-tune, and the shipped file each starts from. numbers learns its
# corrections in a round of training/train_numbers.py instead (--corrections).
BASES = {"digits": REPO / "model" / "digits.pt"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="digits", help="which model to fine-tune (default: %(default)s)")
    p.add_argument("--base", type=Path, help="the model to start from (default: the shipped one)")
    p.add_argument("--db", type=Path, help="the feedback file (default: feedback_db in config.properties)")
    p.add_argument("--steps", type=int, help="optimizer steps (default: 400, 60 with --quick)")
    p.add_argument("--batch-size", type=int, default=128, help="default: %(default)s")
    p.add_argument("--corrections-share", type=float, default=0.25,
                   help="share of each batch drawn from the corrections (default: %(default)s)")
    p.add_argument("--weight", type=float, default=1.0,
                   help="weight of the corrections' loss against the replay's (default: %(default)s)")
    p.add_argument("--distill", type=float, default=1.0,
                   help="weight of matching the shipped model's answers on the replayed images, which keeps "
                        "what it knew (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-4, help="peak AdamW learning rate, cosine decay (default: %(default)s)")
    p.add_argument("--replay", type=int, default=20000,
                   help="MNIST training images replayed, a seeded draw (default: %(default)s)")
    p.add_argument("--sources", default=None,
                   help="other handwriting to replay too (training/sources.py training splits, comma-separated: "
                        "orand,pendigits,usps); default: what the base model was trained on")
    p.add_argument("--val-size", type=int, default=2000, help="MNIST training images kept for calibration (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    p.add_argument("--quick", action="store_true",
                   help="for tests: 1,000 replayed images, 40 steps of 64, 500 test and 256 calibration images")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR, help="MNIST IDX files (default: %(default)s)")
    p.add_argument("--out", type=Path, help="output directory (default: build/retrain/<model>)")
    return p.parse_args(argv)


def load_base(path: Path) -> tuple[DigitNet, NetConfig, dict]:
    """The eager network with the weights of a TorchScript export, and the export's metadata."""
    extra = {"meta.json": ""}
    scripted = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    meta = json.loads(extra["meta.json"])
    config = NetConfig(**meta["config"])
    net = DigitNet(config)
    net.load_state_dict(scripted.state_dict())
    return net, config, meta


def load_corrections(rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Stored corrections as the service sees them (N, 1, 28, 28) and their labels; also how many
    images had no usable ink (they cannot teach anything and are skipped)."""
    images, labels, skipped = [], [], 0
    for r in rows:
        try:
            images.append(pp.preprocess(r["image"]))
        except pp.InputError:
            skipped += 1
            continue
        labels.append(int(r["label"]))
    if not images:
        return torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long), skipped
    return (torch.from_numpy(np.stack(images)).unsqueeze(1), torch.tensor(labels, dtype=torch.long), skipped)


def accuracy(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float | None:
    return None if len(y) == 0 else (predict_logits(net, x).argmax(1) == y).float().mean().item()


def freeze_batch_norm(net: torch.nn.Module) -> None:
    """Keep the running statistics as the shipped model has them (train mode elsewhere)."""
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()


def retrain(args: argparse.Namespace) -> dict:
    """Fine-tune, calibrate, evaluate and export; returns the figures written to metrics.json."""
    if args.model not in BASES:
        raise SystemExit(f"no retraining recipe for model {args.model!r}; known models: {', '.join(BASES)}"
                         + ("; numbers learns its corrections in a training round: python -m training.train_numbers "
                            "--init model/numbers.pt --corrections <feedback file> (docs/feedback.md)"
                            if args.model == "numbers" else ""))
    from serving.server import read_properties

    seed_everything(args.seed)
    args.steps = args.steps or (40 if args.quick else 400)
    if args.quick:
        args.batch_size = min(args.batch_size, 64)
    out = args.out or REPO / "build" / "retrain" / args.model
    out.mkdir(parents=True, exist_ok=True)
    base_path = args.base or BASES[args.model]
    db = args.db or db_path(read_properties())
    if not Path(db).exists():
        raise SystemExit(f"no corrections yet: {db} does not exist (they come from the page, with consent)")
    rows = FeedbackStore(db).rows(args.model)
    train_rows = [r for r in rows if not is_held_out(r["id"])]
    held_rows = [r for r in rows if is_held_out(r["id"])]
    xc, yc, skipped = load_corrections(train_rows)
    xh, yh, _ = load_corrections(held_rows)
    if len(yc) == 0:
        raise SystemExit(f"no corrections of {args.model} to learn from in {db} "
                         f"({len(rows)} stored, {len(held_rows)} of them held out)")

    images, labels = load_split("train", args.data_dir)
    test_images, test_labels = load_split("test", args.data_dir)
    order = np.random.default_rng(args.seed).permutation(len(images))
    val_idx, replay_idx = order[:args.val_size], order[args.val_size:]
    if args.quick:
        val_idx, replay_idx = val_idx[:256], replay_idx[:1000]
        test_images, test_labels = test_images[:500], test_labels[:500]
    replay_idx = replay_idx[:args.replay]
    # Each image also as the service sees it (model.preprocess), as training/train.py trains.
    s_replay, s_val = served_form(images[replay_idx]), served_form(images[val_idx])
    s_test = served_form(test_images)
    x_replay, y_replay = to_tensor(images[replay_idx]), torch.from_numpy(labels[replay_idx]).long()
    s_replay = torch.from_numpy(np.ascontiguousarray(s_replay, dtype=np.float32)).unsqueeze(1)
    n_mnist = len(y_replay)
    x_val, y_val = to_tensor(images[val_idx]), torch.from_numpy(labels[val_idx]).long()
    s_val = torch.from_numpy(np.ascontiguousarray(s_val, dtype=np.float32)).unsqueeze(1)
    x_test, y_test = to_tensor(test_images), torch.from_numpy(test_labels).long()
    s_test = torch.from_numpy(np.ascontiguousarray(s_test, dtype=np.float32)).unsqueeze(1)

    net, config, base_meta = load_base(base_path)
    teacher, _, _ = load_base(base_path)
    # The base model's own training data is replayed: MNIST, and the other sources it learned.
    # (Quick mode, for tests, replays MNIST only unless told: rendering the sources takes minutes.)
    if args.sources is None:
        sources = [] if args.quick else list(base_meta.get("recipe", {}).get("sources") or [])
    else:
        sources = [x for x in args.sources.split(",") if x]
    if sources:
        src_x, src_y = _extra_training_images(sources, argparse.Namespace(copies=1, non_digits=0))
        x_replay, s_replay = torch.cat([x_replay, src_x]), torch.cat([s_replay, src_x])  # served form only
        y_replay = torch.cat([y_replay, src_y])
    teacher.eval()
    before = {"test": accuracy(net, x_test, y_test), "test_served": accuracy(net, s_test, y_test),
              "corrections": accuracy(net, xc, yc), "held_out": accuracy(net, xh, yh)}
    print(f"{args.model} from {base_path}: {len(yc)} corrections to learn ({skipped} without ink skipped), "
          f"{len(yh)} held out; replaying {n_mnist:,} MNIST images and {len(y_replay) - n_mnist:,} of "
          f"{', '.join(sources) or 'no other source'}; {args.steps} steps", flush=True)

    n_corr = max(1, round(args.batch_size * args.corrections_share))
    n_replay = args.batch_size - n_corr
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps)
    gen = torch.Generator().manual_seed(args.seed)
    started = time.perf_counter()
    net.train()
    freeze_batch_norm(net)
    for step in range(1, args.steps + 1):
        ri = torch.randint(len(y_replay), (n_replay,), generator=gen)
        as_served = ((torch.rand(n_replay, generator=gen) < 0.5) | (ri >= n_mnist)).view(-1, 1, 1, 1)
        xr = torch.where(as_served, s_replay[ri], x_replay[ri])
        ci = torch.randint(len(yc), (n_corr,), generator=gen)
        xb = augment(torch.cat([xr, xc[ci]]), gen)
        scores, _ = net(xb)
        with torch.no_grad():
            taught = teacher(xb[:n_replay])[0]
        # Replay: the right labels, and the shipped model's whole answer (distillation at
        # temperature 2), which holds the old boundaries far better than labels alone.
        keep = F.kl_div(F.log_softmax(scores[:n_replay] / 2, 1), F.softmax(taught / 2, 1), reduction="batchmean") * 4
        loss = (F.cross_entropy(scores[:n_replay], y_replay[ri]) + args.distill * keep
                + args.weight * F.cross_entropy(scores[n_replay:], yc[ci]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == args.steps:
            print(f"step {step}/{args.steps}: loss {loss.item():.4f}", flush=True)
    train_seconds = time.perf_counter() - started

    net.eval()
    net.temperature.fill_(1.0)  # refit from scratch: the old temperature was for the old weights
    temperature = fit_temperature(torch.cat([predict_logits(net, x_val), predict_logits(net, s_val)]),
                                  torch.cat([y_val, y_val]))
    net.temperature.fill_(temperature)
    after = {"test": accuracy(net, x_test, y_test), "test_served": accuracy(net, s_test, y_test),
             "corrections": accuracy(net, xc, yc), "held_out": accuracy(net, xh, yh)}
    figures = evaluate(predict_logits(net, x_test), y_test)
    version = f"{base_meta['metrics'].get('version', '?')}+{len(yc)}corrections"
    metrics = {
        "model": args.model, "base": str(base_path), "version": version, "quick": args.quick,
        "accuracy": after["test"], "served_accuracy": after["test_served"], "count": len(y_test),
        "ece": figures["ece"], "temperature": round(temperature, 4), "before": before, "after": after,
        "corrections": len(yc), "held_out": len(yh), "sources": sources, "replayed": len(y_replay), "skipped": skipped, "steps": args.steps,
        "corrections_share": args.corrections_share, "weight": args.weight, "lr": args.lr, "distill": args.distill,
        "train_seconds": round(train_seconds, 1), "parameters": count_parameters(net),
        "machine": f"{describe_machine()}, {torch.get_num_threads()} torch threads", "torch": torch.__version__,
        # export() records the recipe: the base's, plus this fine-tune's in metrics.json and card.md
        "epochs": base_meta.get("recipe", {}).get("epochs"), "seed": args.seed, "served_mix": 0.5, "ema": 0,
        "precision": "fp32",
    }
    model_file = out / f"{args.model}.pt"
    export(net, config, metrics, x_test[:256], model_file)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "card.md").write_text(card(metrics))
    print(card(metrics))
    print(f"wrote {model_file}; release it with: make release MODEL={args.model} VERSION=<new version>")
    return metrics


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2%}"


def card(m: dict) -> str:
    """The fine-tuned model's figures, before and after, as markdown."""
    b, a = m["before"], m["after"]
    rows = [("MNIST test, as stored", "test"), ("MNIST test, as the service sees it", "test_served"),
            (f"corrections trained on ({m['corrections']})", "corrections"),
            (f"held-out corrections ({m['held_out']}; the release re-measures them over HTTP)", "held_out")]
    lines = [f"# {m['model']} fine-tuned on corrections: {m['version']}", "",
             f"From `{m['base']}`; {m['steps']} steps, {m['corrections_share']:.0%} of each batch corrections "
             f"(loss weight {m['weight']}), the rest replayed ({m['replayed']:,} images: MNIST"
             f"{' and ' + ', '.join(m['sources']) if m['sources'] else ''}; labels, and the base model's answers "
             f"with weight {m['distill']}); calibration temperature "
             f"{m['temperature']}; {m['train_seconds']} s on {m['machine']}."
             + (" Quick mode: small subsets, figures are indicative only." if m["quick"] else ""), "",
             "| set | before | after |", "|---|---|---|"]
    lines += [f"| {name} | {_pct(b[key])} | {_pct(a[key])} |" for name, key in rows]
    lines += ["", f"MNIST test images: {m['count']:,}; expected calibration error after: {m['ece']:.2%}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    retrain(parse_args())
