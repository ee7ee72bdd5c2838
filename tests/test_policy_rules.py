"""Each model's own score: cosine thresholds, softmax probabilities and SigLIP's sigmoid
probabilities as policy rules, checked by lint, refused by the compiler where the model cannot
produce them, and carried end to end (a scan and a stream worker) with a random-weight SigLIP
model loaded from a folder (decisions are meaningless; the path is what is tested)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from consumers.cli import main
from pipeline.decode import DecodeOptions, decode_uri
from pipeline.errors import PolicyError
from pipeline.models import load_clip, load_model
from pipeline.policies import load_policies
from pipeline.policies.compile import PolicyCompiler
from pipeline.policies.tools import lint

POLICY = """\
id: {id}
version: 1
description: d
owner: o
severity: high
action: review
model: {model}
labels:
  - name: thing
    prompts: [a red triangle, a blue square]
    {rule}
"""


def _write(folder: Path, *, id: str = "p", model: str = "clipguard-demo", rule: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{id}.yaml"
    path.write_text(POLICY.format(id=id, model=model, rule=rule))
    return path


def test_lint_rejects_a_rule_the_model_cannot_produce_and_prompts_too_long(tmp_path):
    _write(tmp_path, rule="sigmoid: 0.3")
    long = " ".join(["word"] * 40)
    (tmp_path / "q.yaml").write_text(
        POLICY.format(id="q", model="clipguard-demo", rule="threshold: 0.3").replace(
            "a blue square", long
        )
    )
    report = lint([tmp_path])
    assert len(report.errors) == 2, report.errors
    sigmoid, too_long = sorted(report.errors)
    assert sigmoid.startswith(f"{tmp_path / 'p.yaml'}:11:14:") and "needs a SigLIP model" in sigmoid
    assert "clipguard-demo is a CLIP model" in sigmoid
    assert "over the model's limit of 24" in too_long and "(clipguard-demo)" in too_long
    # the same policies are fine against a model that has the context and the rule...
    assert not [e for e in lint([tmp_path], model="ViT-B/32").errors if "limit" in e]
    # ...and a model that is not in the registry is a note, not an error
    other = tmp_path / "other"
    _write(other, rule="threshold: 0.2", model="my-own-clip")
    report = lint([other])
    assert report.ok and "not in the registry" in report.notes[0]


def test_the_compiler_refuses_a_sigmoid_rule_for_clip(tmp_path):
    _write(tmp_path, rule="sigmoid: 0.3")
    with pytest.raises(PolicyError, match="sigmoid rule needs a SigLIP model"):
        PolicyCompiler(load_clip("clipguard-demo"), cache_dir=tmp_path / "c").compile(
            load_policies([tmp_path])
        )


def test_a_label_has_exactly_one_rule(tmp_path):
    _write(tmp_path, rule="sigmoid: 0.3\n    threshold: 0.2")
    with pytest.raises(PolicyError, match="exactly one decision rule"):
        load_policies([tmp_path])


# -- a random-weight SigLIP, end to end -------------------------------------------------------


def _tokenizer_files(folder: Path) -> None:
    """A small BPE tokenizer.json (and its config) trained here, as a checkpoint ships one."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    rng = random.Random(0)
    words = ["a", "red", "blue", "triangle", "square", "photo", "of", "the", "cat"]
    corpus = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(500)]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=120, special_tokens=["<pad>", "</s>", "<unk>"], show_progress=False
    )
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="$A:0 </s>:0", special_tokens=[("</s>", 1)]
    )
    tok.save(str(folder / "tokenizer.json"))
    config = {"pad_token": "<pad>", "eos_token": "</s>", "add_eos_token": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipeline.models.configs import SiglipConfig, SiglipTextConfig, SiglipVisionConfig
    from pipeline.models.siglip import SigLIP
    from pipeline.models.siglip_formats import save_siglip

    folder = tmp_path_factory.mktemp("siglip-model")
    config = SiglipConfig(
        vision=SiglipVisionConfig(
            image_size=32, patch_size=8, width=64, layers=2, heads=4, mlp_width=96
        ),
        text=SiglipTextConfig(
            context_length=16,
            vocab_size=128,
            width=64,
            layers=2,
            heads=4,
            mlp_width=96,
            embed_dim=64,
        ),
    )
    model = SigLIP(config)
    model.init_weights(torch.Generator().manual_seed(7))
    save_siglip(model, folder)
    _tokenizer_files(folder)
    return folder


def _expected_sigmoid(model_dir: Path, image: Path, prompts: list[str]) -> float:
    """The sigmoid score computed here from the model's towers, as SigLIP defines it."""
    model = load_model(model_dir)
    frame = decode_uri(image, DecodeOptions(model.input_resolution)).frames[0].image
    with torch.inference_mode():
        img = model.encode_image(model.preprocess(torch.from_numpy(frame.copy())[None]))
        txt = model.encode_text(model.tokenize(prompts, truncate=True))
    img = torch.nn.functional.normalize(img.float(), dim=-1)
    txt = torch.nn.functional.normalize(txt.float(), dim=-1)
    ensemble = torch.nn.functional.normalize(txt.mean(0), dim=-1)
    cos = float(img[0] @ ensemble)
    assert model.logit_bias is not None
    logit = float(model.logit_scale.exp()) * cos + float(model.logit_bias)
    return 1 / (1 + math.exp(-logit))


def test_a_scan_with_a_siglip_model_reports_sigmoid_scores(siglip_dir, tmp_path):
    import cv2

    policies = tmp_path / "policies"
    _write(policies, rule="sigmoid: 0.0001", model=str(siglip_dir))
    image = tmp_path / "in" / "red.png"
    image.parent.mkdir()
    picture = np.zeros((48, 64, 3), np.uint8)
    picture[10:40, 20:50, 2] = 255
    cv2.imwrite(str(image), picture)
    out = tmp_path / "out"
    args = ["scan", str(image), "--model", str(siglip_dir), "--policies", str(policies)]
    # fp32: the sigmoid scores are compared with the reference to 1e-5 (the default, auto,
    # would first convert the random tower to int8 only for the guard to refuse it)
    code = main([*args, "--precision", "fp32", "--out", str(out)])
    assert code == 0
    (record,) = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    assert record["kinds"] == {"p/thing": "sigmoid"}
    expected = _expected_sigmoid(siglip_dir, image, ["a red triangle", "a blue square"])
    assert record["scores"]["p/thing"] == pytest.approx(expected, abs=1e-5)


def test_a_stream_worker_with_a_siglip_model_publishes_sigmoid_scores(siglip_dir, tmp_path, kafka):
    import streaming
    from streaming import read_topic, scene, worker_thread

    from consumers.produce import produce_file
    from pipeline.demo.video import Shot, write_video

    policies = tmp_path / "policies"
    _write(policies, rule="sigmoid: 0.0001", model=str(siglip_dir))
    video = write_video(
        tmp_path / "clip.mp4", [Shot(0.0, 4.0, scene("red triangle"), "red triangle")]
    )
    kafka.create()
    sent = produce_file(kafka.bootstrap, video, stream_id="cam-siglip", topic=kafka.names.segments)
    # fp32: the random tower's int8 would only be converted for the guard to refuse it
    s = streaming.settings(kafka, model=str(siglip_dir), policies=[str(policies)], precision="fp32")
    with worker_thread(s) as worker:
        streaming.wait_for(lambda: worker.segments_done >= sent, 120, "segments done")
    scores = [r.json() for r in read_topic(kafka.bootstrap, kafka.names.scores)]
    assert len(scores) == 8  # 4 s at the default 2 frames a second
    assert {r["model"] for r in scores} == {str(siglip_dir / "model.safetensors")}
    assert all(r["kinds"] == {"p/thing": "sigmoid"} for r in scores)
    assert all(0.0 < r["scores"]["p/thing"] < 1.0 for r in scores)


def test_the_siglip2_starter_policies_use_sigmoid_rules_in_shadow_mode() -> None:
    folder = Path(__file__).resolve().parent.parent / "policies" / "siglip2"
    report = lint([folder])
    assert report.ok and report.policies == 6, report.errors
    for lp in load_policies([folder]):
        assert lp.policy.mode == "shadow" and not lp.policy.calibrated
        assert lp.policy.model == "siglip2-base-patch16-224"
        assert {label.rule for label in lp.policy.labels} == {"sigmoid"}


def test_a_store_backtest_with_a_siglip_model_rescores_in_sigmoid(siglip_dir, tmp_path):
    from pipeline.demo.video import demo_shots, write_video

    policies = tmp_path / "policies"
    _write(policies, rule="sigmoid: 0.000001", model=str(siglip_dir))  # every frame passes
    clip = tmp_path / "in" / "clip.mp4"
    clip.parent.mkdir()
    write_video(clip, demo_shots(shot_seconds=1.0)[:3])
    out, store = tmp_path / "out", tmp_path / "store"
    args = ["scan", str(clip), "--model", str(siglip_dir), "--policies", str(policies)]
    args += ["--precision", "fp32"]  # the random tower's int8 would be refused by the guard
    assert main([*args, "--sample-fps", "5", "--out", str(out), "--store", str(store)]) == 0
    scanned = {
        (f["event_id"], f["start_ts"], f["end_ts"])
        for f in (json.loads(x) for x in (out / "flags.jsonl").read_text().splitlines())
        if f["state"] == "closed"
    }
    assert scanned  # the whole clip is one incident

    def backtest(folder: Path, name: str) -> dict:
        report = tmp_path / name
        bt = ["policy", "backtest", str(folder), "--store", str(store), "--out", str(report)]
        assert main(bt) == 0
        return json.loads((report / "backtest.json").read_text())

    same = backtest(policies, "same")
    assert {(i["event_id"], i["start_ts"], i["end_ts"]) for i in same["incidents"]} == scanned
    raised = tmp_path / "raised"
    _write(raised, rule="sigmoid: 0.9999", model=str(siglip_dir))  # no frame passes
    doc = backtest(raised, "raised")
    assert doc["incidents"] == []
    assert doc["summary"]["removed"] == len(scanned)
