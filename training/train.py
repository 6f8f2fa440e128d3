"""Train the digit network on MNIST, calibrate it, evaluate it and export TorchScript.

    python -m training.train                      # the shipped recipe (make train)
    python -m training.train --quick --out build/quick   # a few hundred images, one epoch (CI)

Writes to --out: checkpoint.pt (weights plus the config that rebuilds them), digits.pt
(TorchScript, checked against the eager model, config and metrics inside), report.md and
confusion.png (the 10k test set), metrics.json.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from model.network import DigitNet, NetConfig, count_parameters
from serving.machine import describe_machine
from training.augment import augment
from training.data import DATA_DIR, load_served, load_split, served_form
from training.evaluate import evaluate, write_report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=30, help="passes over the training set (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=128, help="default: %(default)s")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the one-cycle schedule (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="AdamW weight decay (default: %(default)s)")
    p.add_argument("--val-size", type=int, default=5000, help="training images held out for validation and calibration (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seeds Python, NumPy and torch (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="torch threads, 0 for torch's choice (default: %(default)s)")
    p.add_argument("--no-augment", action="store_true", help="train on the images as they are")
    p.add_argument("--served-mix", type=float, default=0.5,
                   help="share of training images taken as the service sees them, through model.preprocess, "
                        "instead of as MNIST stores them (default: %(default)s)")
    p.add_argument("--ema", type=float, default=0.999,
                   help="decay of the moving average of the weights that is exported; 0 exports the "
                        "last weights (default: %(default)s)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="arithmetic of the training passes: bf16 autocast (weights stay fp32) halves the "
                        "time on CPUs with native bf16; auto picks it there (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="smoke test: 512 training images, 1 epoch, 1,000 test images")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR, help="MNIST IDX files (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("build/train"), help="output directory (default: %(default)s)")
    p.add_argument("--version", default="1.0", help="model version written into the export (default: %(default)s)")
    p.add_argument("--sources", default="",
                   help="comma-separated other handwriting to train on as well, from training/sources.py: orand, "
                        "pendigits, usps; with any, MNIST's validation split is a tenth of its writers (QMNIST ids) "
                        "(default: none)")
    p.add_argument("--copies", type=int, default=1, help="renders of each source digit per epoch set (default: %(default)s)")
    p.add_argument("--non-digits", type=int, default=0,
                   help="training non-digits (training/wild.py training_non_digits), taught with a uniform target "
                        "so the model spreads its probabilities when it sees no digit (default: %(default)s)")
    p.add_argument("--separators", type=int, default=0,
                   help="separators drawn alone (training/wild.py training_separators: commas, quotes, colons, "
                        "full stops), taught as non-digits are (default: %(default)s)")
    p.add_argument("--non-digit-weight", type=float, default=0.5,
                   help="weight of the non-digits' loss against the digits' (default: %(default)s)")
    p.add_argument("--mnist-fraction", type=float, default=1.0,
                   help="share of MNIST's training split used (a fine-tune can give the other sources more weight) "
                        "(default: %(default)s)")
    p.add_argument("--calibrate-on-sources", action="store_true",
                   help="keep a twentieth of each source's training split back (training/sources.py "
                        "calibration_part) and fit the temperature on it with MNIST's validation split, "
                        "instead of on MNIST alone")
    p.add_argument("--distill", type=float, default=0.0,
                   help="weight of a distillation loss that keeps the network's readings of MNIST's training "
                        "images those of --teacher, else of the model it started from (--init) (KL divergence to "
                        "its probabilities), so learning the other sources does not cost MNIST (default: %(default)s)")
    p.add_argument("--teacher", type=Path, default=None,
                   help="with --distill: the TorchScript export whose readings of MNIST's training images the "
                        "network is held to, e.g. an MNIST-only model for a network trained from scratch on every "
                        "source (default: --init)")
    p.add_argument("--init", type=Path, default=None,
                   help="start from the weights of this TorchScript export (e.g. model/digits.pt): fine-tuning")
    args = p.parse_args(argv)
    if args.distill and not (args.teacher or args.init):
        p.error("--distill needs a model to hold the network to: --teacher or --init")
    return args


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) to float (N, 1, 28, 28) in [0, 1]: the network's input."""
    return torch.from_numpy(images).float().div_(255.0).unsqueeze(1)


def predict_logits(net: torch.nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Scores of ``net`` for every image, in eval mode, without gradients."""
    net.eval()
    with torch.inference_mode():
        return torch.cat([net(images[i:i + batch_size])[0] for i in range(0, len(images), batch_size)])


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Temperature scaling: the T minimising the negative log-likelihood of held-out labels."""
    logits = logits.clone()  # may come from inference mode
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def use_bf16(precision: str) -> bool:
    """bf16 autocast when asked, or with ``auto`` when the CPU computes bf16 natively."""
    if precision == "auto":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return precision == "bf16"


def train(args: argparse.Namespace) -> dict:
    seed_everything(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    images, labels = load_split("train", args.data_dir)
    test_images, test_labels = load_split("test", args.data_dir)
    sources = [s for s in args.sources.split(",") if s]
    if sources:  # held out by writer, as the other sources are (training/sources.py)
        from training.sources import load_writers, split
        train_idx, val_idx = split("mnist", len(images), load_writers())
        train_idx = np.random.default_rng(args.seed).permutation(train_idx)
        train_idx = train_idx[:int(round(len(train_idx) * args.mnist_fraction))]
    else:
        order = np.random.default_rng(args.seed).permutation(len(images))
        val_idx, train_idx = order[:args.val_size], order[args.val_size:]
    if args.quick:
        train_idx, val_idx = train_idx[:512], val_idx[:256]
        test_images, test_labels = test_images[:1000], test_labels[:1000]
        args.epochs = 1
        served_train, served_val = served_form(images[train_idx]), served_form(images[val_idx])
        served_test = served_form(test_images)
    else:
        served = load_served("train", args.data_dir)
        served_train, served_val, served_test = served[train_idx], served[val_idx], load_served("test", args.data_dir)
    # Every image in two forms: as MNIST stores it, and as the service sees it after
    # model.preprocess (re-cropped, stroke-matched, refitted). Training on both keeps the
    # network at home with either, so serving does not pay for a train/serve mismatch.
    x_train, s_train, y_train = to_tensor(images[train_idx]), _float_tensor(served_train), torch.from_numpy(labels[train_idx]).long()
    x_val, s_val, y_val = to_tensor(images[val_idx]), _float_tensor(served_val), torch.from_numpy(labels[val_idx]).long()
    x_test, s_test, y_test = to_tensor(test_images), _float_tensor(served_test), torch.from_numpy(test_labels).long()
    mnist_count = len(y_train)  # MNIST's images come first in the training tensors
    extra_x, extra_y = _extra_training_images(sources, args)
    calib_x, calib_y = (_extra_training_images(sources, args, part="calibration") if args.calibrate_on_sources
                        else (torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)))
    if len(extra_y):
        # Sources and non-digits exist only in the form the service sees (no MNIST-stored form):
        # they take that form in both slots. Non-digits have the label -1 (uniform target).
        x_train, s_train = torch.cat([x_train, extra_x]), torch.cat([s_train, extra_x])
        y_train = torch.cat([y_train, extra_y])

    config = NetConfig()
    net = DigitNet(config).to(memory_format=torch.channels_last)
    if args.init:
        net.load_state_dict(torch.jit.load(str(args.init), map_location="cpu").state_dict())
        net.temperature.fill_(1.0)  # calibrated again at the end
    # parse_args refuses --distill without --teacher or --init
    teacher_path = (args.teacher or args.init) if args.distill else None
    teacher = torch.jit.load(str(teacher_path), map_location="cpu").eval() if teacher_path else None
    bf16 = use_bf16(args.precision)
    print(f"DigitNet: {count_parameters(net):,} parameters; {len(x_train):,} train, {len(x_val):,} val, "
          f"{len(x_test):,} test images; {torch.get_num_threads()} threads; {'bf16 autocast' if bf16 else 'fp32'}")
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    ema = (torch.optim.swa_utils.AveragedModel(net, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema),
                                               use_buffers=True) if args.ema else None)
    steps_per_epoch = (len(x_train) + args.batch_size - 1) // args.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, epochs=args.epochs,
                                                steps_per_epoch=steps_per_epoch, pct_start=0.2)
    gen = torch.Generator().manual_seed(args.seed)
    history = []
    started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        net.train()
        perm = torch.randperm(len(x_train), generator=gen)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{args.epochs}", unit="batch", leave=True)
        total_loss = correct = seen = 0
        for step in bar:
            idx = perm[step * args.batch_size:(step + 1) * args.batch_size]
            as_served = (torch.rand(len(idx), generator=gen) < args.served_mix).view(-1, 1, 1, 1)
            xb, yb = torch.where(as_served, s_train[idx], x_train[idx]), y_train[idx]
            if not args.no_augment:
                xb = augment(xb, gen)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                scores, _ = net(xb.contiguous(memory_format=torch.channels_last))
            loss = _loss(scores.float(), yb, args.non_digit_weight)
            mnist = idx < mnist_count
            if teacher is not None and mnist.any():
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    target = teacher(xb[mnist].contiguous(memory_format=torch.channels_last))[0].float()
                loss = loss + args.distill * F.kl_div(F.log_softmax(scores.float()[mnist], 1),
                                                      F.log_softmax(target.clone(), 1), log_target=True,
                                                      reduction="sum") / len(yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if ema is not None:
                ema.update_parameters(net)
            total_loss += loss.item() * len(yb)
            correct += (scores.argmax(1) == yb).sum().item()
            seen += int((yb >= 0).sum())
            if step % 20 == 0:
                bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}")
        final = ema.module if ema is not None else net
        val_acc = (predict_logits(final, x_val).argmax(1) == y_val).float().mean().item()
        val_served = (predict_logits(final, s_val).argmax(1) == y_val).float().mean().item()
        history.append({"epoch": epoch, "loss": total_loss / seen, "train_acc": correct / seen,
                        "val_acc": val_acc, "val_served_acc": val_served})
        tqdm.write(f"epoch {epoch}: loss {total_loss / seen:.4f}, train acc {correct / seen:.4f}, "
                   f"val acc {val_acc:.4f} (as served {val_served:.4f})")
    train_seconds = time.perf_counter() - started

    net = (ema.module if ema is not None else net).to(memory_format=torch.contiguous_format)
    # The temperature is fitted on the held-out images in both forms, as both reach the service,
    # and on the sources' calibration parts when kept back (--calibrate-on-sources).
    val_scores = torch.cat([predict_logits(net, x_val), predict_logits(net, s_val)]
                           + ([predict_logits(net, calib_x)] if len(calib_y) else []))
    temperature = fit_temperature(val_scores, torch.cat([y_val, y_val, calib_y]))
    net.temperature.fill_(temperature)
    print(f"calibration temperature on the validation split ({len(val_scores):,} images, "
          f"{len(calib_y):,} of them the sources'): {temperature:.3f}")

    torch.save({"config": config.to_dict(), "state_dict": net.state_dict(), "args": _jsonable(vars(args)),
                "history": history}, args.out / "checkpoint.pt")

    metrics = evaluate(predict_logits(net, x_test), y_test)
    served_metrics = evaluate(predict_logits(net, s_test), y_test)
    metrics.update({
        "parameters": count_parameters(net), "epochs": args.epochs, "seed": args.seed,
        "served_accuracy": served_metrics["accuracy"], "served_errors": served_metrics["errors"],
        "served_ece": served_metrics["ece"],
        "train_seconds": round(train_seconds, 1), "temperature": round(temperature, 4),
        "precision": "bf16 autocast" if bf16 else "fp32", "ema": args.ema, "served_mix": args.served_mix,
        "machine": f"{describe_machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__, "version": args.version, "quick": args.quick,
        "sources": sources, "non_digits": args.non_digits, "separators": args.separators, "init": str(args.init) if args.init else None,
        "mnist_fraction": args.mnist_fraction, "calibrated_on_sources": args.calibrate_on_sources,
        "calibration_images": len(calib_y), "lr": args.lr, "non_digit_weight": args.non_digit_weight,
        "copies": args.copies, "distill": args.distill,
        "teacher": str(teacher_path) if teacher_path else None,
        "val_images": len(y_val),
    })
    export(net, config, metrics, x_test[:256], args.out / "digits.pt")
    write_report(metrics, history, args.out)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"test accuracy {metrics['accuracy']:.4%} on {metrics['count']:,} images "
          f"({metrics['served_accuracy']:.4%} as served); trained in {train_seconds:.0f} s; wrote {args.out}")
    return metrics


def _loss(scores: torch.Tensor, labels: torch.Tensor, non_digit_weight: float) -> torch.Tensor:
    """Cross-entropy for digits; for non-digits (label -1), cross-entropy against the uniform
    distribution, which is lowest when every class gets a tenth: "none of these"."""
    digits = labels >= 0
    log_p = F.log_softmax(scores, 1)
    loss = F.nll_loss(log_p[digits], labels[digits], reduction="sum") if digits.any() else scores.sum() * 0
    if not digits.all():
        loss = loss - non_digit_weight * log_p[~digits].mean(1).sum()
    return loss / len(labels)


def _extra_training_images(sources: list[str], args: argparse.Namespace,
                           part: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The training splits of the other sources and the training non-digits, in served form,
    cached in build/sources/ under the hash of the code that makes them. ``part``
    ``calibration`` gives the sources' calibration parts instead (one render each, no
    non-digits); by default the training part when ``args.calibrate_on_sources`` keeps
    those back, else the whole training split."""
    import hashlib

    from model import preprocess
    from training import sources as src, wild

    if part is None:
        part = "train" if getattr(args, "calibrate_on_sources", False) else "all"
    parts_x, parts_y = [], []
    code = hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in (src, preprocess, wild))).hexdigest()[:12]
    cache = Path("build") / "sources"
    cache.mkdir(parents=True, exist_ok=True)
    for name in sources:
        # ORAND is the smallest source, and the hardest: twice the renders (not for calibration).
        copies = 1 if part == "calibration" else args.copies * (2 if name == "orand" else 1)
        path = cache / f"{name}-{copies}-{part}-{code}.npz"
        if not path.exists():
            x, y = src.training_images(name, copies=copies, part=part, seed=7 if part == "calibration" else 1)
            np.savez(path, x=x.astype(np.float16), y=y)
        with np.load(path) as z:
            parts_x.append(z["x"].astype(np.float32))
            parts_y.append(z["y"].astype(np.int64))
        print(f"{name}: {len(parts_y[-1]):,} {part} images")
    for kind, count, make in (("non-digits", args.non_digits, wild.training_non_digits),
                              ("separators", getattr(args, "separators", 0), wild.training_separators)):
        if not count or part == "calibration":
            continue
        path = cache / f"{kind}-{count}-{code}.npz"
        if not path.exists():
            from tqdm import tqdm
            xs = []
            for sample in tqdm(make(count), desc=kind, mininterval=2):
                try:
                    xs.append(preprocess.preprocess(sample.data))
                except preprocess.InputError:  # blank after all: nothing to learn from
                    continue
            np.savez(path, x=np.stack(xs).astype(np.float16))
        with np.load(path) as z:
            parts_x.append(z["x"].astype(np.float32))
            parts_y.append(np.full(len(z["x"]), -1, dtype=np.int64))
        print(f"{kind}: {len(parts_y[-1]):,} training images")
    if not parts_x:
        return torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)
    return _float_tensor(np.concatenate(parts_x)), torch.from_numpy(np.concatenate(parts_y))


def _float_tensor(images: np.ndarray) -> torch.Tensor:
    """float (N, 28, 28) in [0, 1] to (N, 1, 28, 28)."""
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1)


def export(net: DigitNet, config: NetConfig, metrics: dict, sample: torch.Tensor, path: Path) -> None:
    """Script the network, check it against the eager model, and save it with its metadata."""
    net.eval()
    scripted = torch.jit.script(net)
    with torch.inference_mode():
        eager_scores, eager_acts = net(sample)
        script_scores, script_acts = scripted(sample)
    torch.testing.assert_close(script_scores, eager_scores)
    for a, b in zip(script_acts, eager_acts):
        torch.testing.assert_close(a, b)
    meta = {"config": config.to_dict(), "layers": net.layer_names,
            "metrics": {k: metrics[k] for k in ("accuracy", "served_accuracy", "count", "temperature", "version")},
            "recipe": {k: metrics[k] for k in ("epochs", "seed", "served_mix", "ema", "precision", "sources",
                                               "non_digits", "separators", "init", "lr", "copies", "non_digit_weight",
                                               "calibrated_on_sources", "calibration_images", "distill", "teacher",
                                               "blend_alpha")
                       if k in metrics}}
    torch.jit.save(scripted, str(path), _extra_files={"meta.json": json.dumps(meta)})


def _jsonable(d: dict) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


if __name__ == "__main__":
    train(parse_args())
