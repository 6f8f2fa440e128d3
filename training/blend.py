"""Blend a fine-tuned network's weights with those of the model it started from, calibrate, export.

    python -m training.blend --init build/train-writers/start.pt --tuned build/train-writers \\
        --alpha 0.5 --sources orand,pendigits,usps --out build/train-writers/blend

Fine-tuning on the other writers teaches their shapes but slowly costs MNIST. The weights on the
straight line between the starting model and the fine-tuned one (``alpha`` of the way to the
fine-tuned model; batch-norm statistics blended alike) keep most of both: weight-space
ensembling, as in Wortsman et al. 2022, "Robust fine-tuning of zero-shot models" (WiSE-FT).
Several alphas print MNIST test figures for each; with ``--out`` the first is exported like
training/train.py's export, the temperature fitted again as there (MNIST's held-out writers
in both forms, and the sources' calibration parts with ``--sources``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from model.network import DigitNet, NetConfig, count_parameters
from training.data import DATA_DIR, load_served, load_split
from training.evaluate import evaluate, write_report
from training.train import _extra_training_images, _float_tensor, export, fit_temperature, predict_logits, to_tensor


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", type=Path, required=True, help="TorchScript export the fine-tune started from")
    p.add_argument("--tuned", type=Path, required=True, help="training/train.py's --out of the fine-tune")
    p.add_argument("--alpha", type=float, nargs="+", default=[0.5],
                   help="share of the way from --init to --tuned (1: the fine-tuned model) (default: %(default)s)")
    p.add_argument("--sources", default="", help="sources whose calibration parts join the temperature fit")
    p.add_argument("--threads", type=int, default=0, help="torch threads, 0 for torch's choice")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("--out", type=Path, default=None, help="export the first alpha's network here")
    return p.parse_args(argv)


def blend(start: dict, tuned: dict, alpha: float) -> dict:
    """``alpha`` of the way from ``start`` to ``tuned``, tensor by tensor (counters: the tuned ones)."""
    return {k: (start[k] + alpha * (v - start[k])) if v.is_floating_point() and k != "temperature" else v.clone()
            for k, v in tuned.items()}


def main(args: argparse.Namespace) -> None:
    from training.sources import load_writers, split

    if args.threads:
        torch.set_num_threads(args.threads)
    start = torch.jit.load(str(args.init), map_location="cpu").state_dict()
    checkpoint = torch.load(args.tuned / "checkpoint.pt", map_location="cpu")
    tuned_metrics = json.loads((args.tuned / "metrics.json").read_text())
    config = NetConfig(**checkpoint["config"])
    images, labels = load_split("train", args.data_dir)
    _, val_idx = split("mnist", len(images), load_writers())
    served = load_served("train", args.data_dir)
    x_val, s_val = to_tensor(images[val_idx]), _float_tensor(served[val_idx])
    y_val = torch.from_numpy(labels[val_idx]).long()
    sources = [s for s in args.sources.split(",") if s]
    calib_x, calib_y = _extra_training_images(sources, argparse.Namespace(copies=1, non_digits=0), part="calibration")
    test_images, test_labels = load_split("test", args.data_dir)
    x_test, s_test = to_tensor(test_images), _float_tensor(load_served("test", args.data_dir))
    y_test = torch.from_numpy(test_labels).long()
    for k, alpha in enumerate(args.alpha):
        net = DigitNet(config)
        net.load_state_dict(blend(start, checkpoint["state_dict"], alpha))
        net.temperature.fill_(1.0)
        scores = torch.cat([predict_logits(net, x_val), predict_logits(net, s_val)]
                           + ([predict_logits(net, calib_x)] if len(calib_y) else []))
        temperature = fit_temperature(scores, torch.cat([y_val, y_val, calib_y]))
        net.temperature.fill_(temperature)
        metrics = evaluate(predict_logits(net, x_test), y_test)
        served_metrics = evaluate(predict_logits(net, s_test), y_test)
        print(f"alpha {alpha:.2f}: MNIST test {metrics['accuracy']:.4%} as stored, {served_metrics['accuracy']:.4%} "
              f"as served; temperature {temperature:.4f}", flush=True)
        if k == 0 and args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            metrics.update({key: tuned_metrics[key] for key in tuned_metrics if key not in metrics})
            metrics.update({"served_accuracy": served_metrics["accuracy"], "served_errors": served_metrics["errors"],
                            "served_ece": served_metrics["ece"], "temperature": round(temperature, 4),
                            "parameters": count_parameters(net), "blend_alpha": alpha,
                            "init": str(args.init), "calibration_images": len(calib_y)})
            export(net, config, metrics, x_test[:256], args.out / "digits.pt")
            write_report(metrics, checkpoint.get("history", []), args.out)
            (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            print(f"wrote {args.out}")


if __name__ == "__main__":
    main(parse_args())
