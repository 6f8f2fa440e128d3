"""The numbers training in quick mode end to end: strings made from the sources' training
splits, a few steps, calibration, and a TorchScript export the handler loads."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model.number_network import STRIP_HEIGHT
from tests.conftest import REPO, needs_shared_datasets

pytestmark = needs_shared_datasets  # the numbers training reads the shared sources


def test_quick_training_writes_a_torchscript_file_the_handler_serves(tmp_path):
    from training.train_numbers import parse_args, train

    narrow = ["--channels", "8", "16", "16", "24", "--hidden", "32"]  # not the default shape
    metrics = train(parse_args(["--quick", *narrow, "--out", str(tmp_path)]))
    assert metrics["quick"] is True and metrics["steps"] == 30 and metrics["config"]["hidden"] == 32
    assert set(metrics["strings_seen"]) == {"mnist", "pendigits", "usps", "orand"}
    assert metrics["calibration_strings"] >= 64 and metrics["platt"]["on"] == "logit"
    extra = {"meta.json": ""}
    scripted = torch.jit.load(str(tmp_path / "numbers.pt"), _extra_files=extra)
    scores, maps = scripted(torch.zeros(2, 1, STRIP_HEIGHT, 64))
    meta = json.loads(extra["meta.json"])
    assert scores.shape == (2, 16, 11) and torch.allclose(scores.exp().sum(2), torch.ones(2, 16))
    assert len(maps) == len(meta["layers"]) and set(meta["calibration"]) == {"a", "b", "on"}
    assert json.loads((tmp_path / "report.json").read_text())["version"] == "1.0"

    from handler.numbers_handler import NumbersHandler
    from serving import local
    from tests.conftest import number_png
    handler = local.load_handler(tmp_path / "numbers.pt", handler_class=NumbersHandler, model_name="numbers")
    (status, answer), = local.handle(handler, [{"body": number_png("2931", 30)[0]}])[0]
    # a 30-step model may read nothing (422) or a wrong string, but answers in the contract's shape
    assert (status == 422 and answer["error"] == "no_digit") or (status == 200 and set(answer) >= {"confidence", "digits"})

    # --weights calibrates and exports a run's trained weights again, without training, in the
    # shape its report.json gives (no --channels or --hidden needed)
    again = train(parse_args(["--quick", "--weights", str(tmp_path / "weights.pt"), "--out", str(tmp_path / "again")]))
    assert again["steps"] == metrics["steps"] and again["strings_seen"] == metrics["strings_seen"]
    assert again["trained_by"] == metrics["command"]
    assert "Calibrated and exported by" in (tmp_path / "again" / "report.md").read_text()
    exported = torch.jit.load(str(tmp_path / "again" / "numbers.pt"))
    x = torch.rand(1, 1, STRIP_HEIGHT, 64)
    assert torch.allclose(exported(x)[0], scripted(x)[0], atol=1e-5)  # the same weights

    # --init starts from a run's weights: at a learning rate of 0 the training leaves them as they were
    # (batch norm's running statistics still move with the new strings, so those are left out)
    # --init also takes an export: its network's weights, or an ensemble's first (the shipped cascade's)
    from model.number_network import NumberNet
    from training.train_numbers import initial_weights
    trained = torch.load(tmp_path / "weights.pt")
    exported = initial_weights(tmp_path / "numbers.pt")
    assert exported.keys() == trained.keys() and all(torch.equal(trained[k], exported[k]) for k in trained)
    NumberNet().load_state_dict(initial_weights(REPO / "model" / "numbers.pt"))
    # #k names one network of an exported ensemble, for --init and --ensemble alike
    from model.number_network import NumberNetConfig
    from training.train_numbers import load_ensemble
    shipped, _ = load_ensemble([REPO / "model" / "numbers.pt"])
    second, described = load_ensemble([Path(f"{REPO / 'model' / 'numbers.pt'}#2")])
    assert len(second.nets) == 1 and described["members"][0]["export"].startswith("network 2 of ")
    wide = NumberNet(NumberNetConfig(**described["members"][0]["config"]))
    wide.load_state_dict(initial_weights(f"{REPO / 'model' / 'numbers.pt'}#2"))
    assert all(torch.equal(v, shipped.nets[1].state_dict()[k]) for k, v in wide.state_dict().items())
    with pytest.raises(SystemExit, match="holds 2 network"):
        load_ensemble([Path(f"{REPO / 'model' / 'numbers.pt'}#3")])
    # (and learns the page's corrections too: read before and after, the held-out fifth)
    db = corrections_file(tmp_path)
    more = train(parse_args(["--quick", *narrow, "--init", str(tmp_path / "weights.pt"), "--seed", "1", "--lr", "0",
                             "--corrections", str(db), "--corrections-share", "0.5", "--out", str(tmp_path / "more")]))
    assert more["steps"] == 30 and more["init"] == str(tmp_path / "weights.pt")
    report = (tmp_path / "more" / "report.md").read_text()
    assert "Continued from the weights in" in report
    c = more["corrections"]
    assert (c["file"], c["trained_on"], c["held_out"]) == (str(db), 5, 1) and more["strings_seen"]["corrections"] > 0
    assert c["held_out_right_before"] in (0.0, 1.0) and c["held_out_right_after"] in (0.0, 1.0)
    assert "Corrections sent from the page" in report and "the 1 held out" in report
    before, after = torch.load(tmp_path / "weights.pt"), torch.load(tmp_path / "more" / "weights.pt")
    learned = [k for k in before if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(learned) > 10 and all(torch.equal(before[k], after[k]) for k in learned)


def test_strings_made_in_a_worker_process_are_the_ones_made_in_process():
    """make train-numbers makes its strings in a second process: the same seeded strings, in
    the same order, as one process makes them, so a run is reproducible either way."""
    from itertools import islice

    from model.number_network import STRIDE
    from training.train_numbers import load_pools, string_stream

    pools, _ = load_pools(quick=True)
    here = list(islice(string_stream(pools, seed=3, workers=0), 12))
    there = list(islice(string_stream(pools, seed=3, workers=1), 12))
    assert [s.text for s in here] == [s.text for s in there]
    assert [s.source for s in here] == [s.source for s in there]
    assert all((a.strip == b.strip).all() for a, b in zip(here, there))
    assert len({s.source for s in here}) > 1  # the mix, not one source
    assert all(s.strip.shape[0] == STRIP_HEIGHT and s.strip.shape[1] // STRIDE >= 2 * len(s.text) + 1 for s in here)
    other = list(islice(string_stream(pools, seed=4, workers=0), 12))
    assert [s.text for s in other] != [s.text for s in here]


def test_an_ensemble_export_is_served_and_of_twins_reads_as_one_member(tmp_path, monkeypatch):
    """--ensemble calibrates and exports several trained networks as one numbers.pt (--cascade
    adds the first-network-first reading); the handler serves it. Two copies of one network must
    read as that network alone does."""
    import shutil

    from handler.numbers_handler import NumbersHandler
    from serving import local
    from tests.conftest import number_png
    from training.train_numbers import parse_args, train

    from model.number_network import NumberNet, NumberNetConfig, Platt
    from serving.archive import NUMBERS_FILE
    from training.train_numbers import export

    # the shipped export's first network, exported alone as a run would export it
    extra = {"meta.json": ""}
    shipped = torch.jit.load(str(NUMBERS_FILE), _extra_files=extra)
    net = NumberNet(NumberNetConfig(**json.loads(extra["meta.json"])["members"][0]))
    net.load_state_dict({k[len("nets.0."):]: v for k, v in shipped.state_dict().items() if k.startswith("nets.0.")})
    one = tmp_path / "one" / "numbers.pt"
    one.parent.mkdir()
    export(net, {"platt": Platt(3.0, 2.6).to_meta(), "peak_offset": 2.7}, one, torch.zeros(1, 1, STRIP_HEIGHT, 64))
    twin = tmp_path / "twin" / "numbers.pt"  # an export alone: no report.json beside it
    twin.parent.mkdir()
    shutil.copy(one, twin)
    metrics = train(parse_args(["--quick", "--ensemble", str(one), str(twin), "--cascade", "0.9",
                                "--out", str(tmp_path / "ens")]))
    assert len(metrics["members"]) == 2 and len(metrics["peak_offsets"]) == 2
    assert metrics["cascade"]["threshold"] == 0.9 and 0 <= metrics["cascade"]["escalated"] <= 1
    report = (tmp_path / "ens" / "report.md").read_text()
    assert "an ensemble of 2 networks" in report and "A cascade" in report
    load = lambda path: local.load_handler(path, handler_class=NumbersHandler, model_name="numbers")
    served = load(tmp_path / "ens" / "numbers.pt")
    assert hasattr(served.model, "each") and served.cascade[0] == 0.9  # the optimised module reads every member
    pngs = [{"body": number_png("2931", [30, -6, 30])[0]}, {"body": number_png("40517")[0]}]
    served.cascade = (1.01, served.cascade[1])  # every strip through both twins
    monkeypatch.setattr("handler.numbers_handler.SURE_AS_IT_IS", 1.01)  # and the lone network reads every strip moved too
    ensemble, single = local.handle(served, pngs)[0], local.handle(load(one), pngs)[0]
    assert [a["text"] for _, a in single] == ["2931", "40517"]
    for (status, e), (_, s) in zip(ensemble, single):
        assert status == 200 and (e["text"] or e["guess"]) == s["text"]
        assert [d["probabilities"] for d in e["digits"]] == [d["probabilities"] for d in s["digits"]]

    # the ensemble's own export calibrates again (a shipped model/numbers.pt, its runs' folders gone):
    # the same networks, and what its meta.json kept of their training
    again = train(parse_args(["--quick", "--ensemble", str(tmp_path / "ens" / "numbers.pt"), "--cascade", "0.9",
                              "--seed", "5", "--out", str(tmp_path / "again")]))
    assert [m["config"] for m in again["members"]] == [m["config"] for m in metrics["members"]]
    assert [m["command"] for m in again["members"]] == [m["command"] for m in metrics["members"]]
    assert all(f"network {i + 1} of {tmp_path / 'ens' / 'numbers.pt'}" in m["export"] for i, m in enumerate(again["members"]))
    x = torch.rand(2, 1, STRIP_HEIGHT, 64)
    before, after = (torch.jit.load(str(d / "numbers.pt")) for d in (tmp_path / "ens", tmp_path / "again"))
    for b, a in zip(before.each(x)[0], after.each(x)[0]):
        assert torch.equal(a, b)


def test_strings_made_by_several_workers_are_repeatable_and_not_copies_of_each_other():
    """A GPU run makes strings in many processes (--workers 14): each its own seeded
    sequence, taken in turn, so the same run makes the same strings and no two makers repeat
    each other."""
    from itertools import islice

    from training.train_numbers import load_pools, string_stream

    pools, _ = load_pools(quick=True)
    first = list(islice(string_stream(pools, seed=3, workers=2), 8))
    again = list(islice(string_stream(pools, seed=3, workers=2), 8))
    assert [s.text for s in first] == [s.text for s in again]
    assert all((a.strip == b.strip).all() for a, b in zip(first, again))
    one, two = first[0::2], first[1::2]  # the loader takes the two makers in turn
    assert all(a.strip.shape != b.strip.shape or (a.strip != b.strip).any() for a, b in zip(one, two))
    assert [s.text for s in one] != [s.text for s in two]


def test_a_gpu_run_without_a_gpu_and_negative_workers_are_refused(capsys, monkeypatch):
    from training.train_numbers import parse_args

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        parse_args(["--device", "cuda"])
    assert "sees no CUDA GPU" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--workers", "-1"])
    assert "0 or more" in capsys.readouterr().err
    assert parse_args(["--workers", "14"]).workers == 14


def test_init_and_weights_together_are_refused(capsys):
    from training.train_numbers import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--init", "a/weights.pt", "--weights", "b/weights.pt"])
    assert "give one" in capsys.readouterr().err


def test_the_cheque_amounts_share_sets_which_sources_the_strings_come_from(capsys):
    from collections import Counter
    from itertools import islice

    from training.train_numbers import MIX, load_pools, mix_with, parse_args, string_stream

    assert mix_with(MIX["orand"]) == pytest.approx(MIX)
    shares = mix_with(0.6)
    assert shares["orand"] == 0.6 and sum(shares.values()) == pytest.approx(1)
    assert shares["mnist"] / shares["pendigits"] == pytest.approx(MIX["mnist"] / MIX["pendigits"])
    pools, _ = load_pools(quick=True)
    assert {s.source for s in islice(string_stream(pools, seed=3, workers=0, mix=mix_with(1.0)), 20)} == {"orand"}
    made = Counter(s.source for s in islice(string_stream(pools, seed=3, workers=0, mix=mix_with(0.0)), 60))
    assert "orand" not in made and len(made) == 3
    with pytest.raises(SystemExit):
        parse_args(["--orand-share", "1.5"])
    assert "between 0 and 1" in capsys.readouterr().err


def test_spliced_cheque_amounts_join_two_real_amounts_at_cuts_between_their_digits():
    from itertools import islice

    import numpy as np

    from training.train_numbers import _gaps, load_pools, mix_with, spliced_cheque, string_stream

    pools, _ = load_pools(quick=True)
    cheques = pools.cheques
    rng = np.random.default_rng(0)
    made = [m for m in (spliced_cheque(cheques, rng) for _ in range(30)) if m is not None]
    assert len(made) > 20
    for img, labels in made:
        assert img.mode == "RGB" and 1 <= len(labels) and all(0 <= d <= 9 for d in labels)
    # each made amount is a prefix of one real amount's digits and a suffix of another's
    prefixes = {tuple(c.labels[:k]) for c in cheques for k, _ in _gaps(c)}
    suffixes = {tuple(c.labels[k:]) for c in cheques for k, _ in _gaps(c)}
    for img, labels in made:
        assert any(tuple(labels[:k]) in prefixes and tuple(labels[k:]) in suffixes for k in range(1, len(labels)))
    assert {tuple(labels) for _, labels in made} - {tuple(c.labels) for c in cheques}  # amounts not in the split
    mix = mix_with(0.5, spliced=0.5)
    assert mix["orand"] == mix["orand-spliced"] == 0.25 and sum(mix.values()) == pytest.approx(1)
    strings = list(islice(string_stream(pools, seed=5, workers=0, mix=mix_with(1.0, spliced=1.0)), 10))
    assert {s.source for s in strings} == {"orand-spliced"} and all(len(s.text) >= 2 for s in strings)


CORRECTED = ["2931", "407", "1856", "55", "70312", "9"]  # stored as ids 1-6: id 5, 70312, is held out


def corrections_file(tmp_path):
    """A feedback file as the gateway writes it: numbers corrected on the page, and a digit."""
    from serving.feedback import Correction, FeedbackStore
    from tests.conftest import number_png

    store = FeedbackStore(tmp_path / "feedback.sqlite3")
    for text in CORRECTED:
        store.add(Correction("numbers", "1.3", text, None, number_png(text, 30)[0], "PNG"), client="page")
    store.add(Correction("digits", "1.2", "7", "1", number_png("7")[0], "PNG"), client="page")  # another model's
    return store.path


def test_the_pages_corrections_of_numbers_become_training_strings_but_never_the_held_out_fifth(tmp_path):
    from itertools import islice

    from training.train_numbers import load_corrections, load_pools, mix_with, string_stream

    learn, held = load_corrections(corrections_file(tmp_path))
    as_text = lambda rows: sorted("".join(map(str, digits)) for _, digits in rows)
    assert as_text(learn) == sorted(set(CORRECTED) - {"70312"}) and as_text(held) == ["70312"]
    pools, _ = load_pools(quick=True)
    pools.corrections = learn
    strings = list(islice(string_stream(pools, seed=2, workers=0, mix=mix_with(0.3, corrections=1.0)), 16))
    assert {s.source for s in strings} == {"corrections"}
    assert {"".join(map(str, s.text)) for s in strings} <= set(CORRECTED) - {"70312"}
    mixed = mix_with(0.3, corrections=0.1)
    assert mixed["corrections"] == 0.1 and sum(mixed.values()) == pytest.approx(1.0)


def test_corrections_without_training_or_without_a_file_are_refused(tmp_path, capsys):
    from training.train_numbers import parse_args, train

    with pytest.raises(SystemExit):
        parse_args(["--weights", "w.pt", "--corrections", "f.sqlite3"])
    assert "--corrections are learnt in training" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="does not exist"):
        train(parse_args(["--quick", "--corrections", str(tmp_path / "none.sqlite3"), "--out", str(tmp_path / "out")]))
