"""Policy files: strict validation with file:line:column, compilation, the cache, decisions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.errors import PolicyError
from pipeline.models import CLIP, CLIPConfig, TextConfig, VisionConfig, load_clip, tokenize
from pipeline.policies import load_policies, load_policy, parse_policy
from pipeline.policies.bundled import DEMO_POLICIES
from pipeline.policies.compile import PolicyCompiler
from pipeline.policies.score import CompiledLabel, CompiledPolicies

ROOT = Path(__file__).resolve().parent.parent

GOOD = """\
id: knives
version: 2
description: Knives held or shown.
owner: tns@example.com
severity: high
action: review
labels:
  - name: knife
    prompts: [a knife, a kitchen knife]
    templates: ["{}", "a photo of {}"]
    negatives: [a fork, a spoon]
    threshold: 0.25
    margin: 0.01
  - name: blade
    prompts: [a blade]
    negatives: [a feather]
    probability: 0.7
temporal: {k: 2, n: 3, close_after: 2, cooldown_s: 5}
"""


def _error(text: str, name: str = "knives.yaml") -> str:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, path=name)
    return str(info.value)


def test_a_valid_policy_parses_with_defaults():
    p = parse_policy(GOOD, path="knives.yaml")
    assert p.id == "knives" and p.version == 2 and p.mode == "enforce"
    knife = p.label("knife")
    assert knife.texts() == [
        "a knife",
        "a photo of a knife",
        "a kitchen knife",
        "a photo of a kitchen knife",
    ]
    assert knife.negative_texts()[:2] == ["a fork", "a photo of a fork"]
    assert p.temporal.k == 2 and p.temporal.cooldown_s == 5.0
    assert p.label("blade").probability == 0.7


@pytest.mark.parametrize(
    ("edit", "where", "says"),
    [
        # unknown key, at its own line
        (("    margin: 0.01\n", "    margin: 0.01\n    colour: red\n"), ":14:5:", "unknown key"),
        # wrong type
        (("version: 2", "version: two"), ":2:10:", "valid integer"),
        # empty prompt list
        (("prompts: [a blade]", "prompts: []"), ":15:14:", "at least 1 item"),
        # bad thresholds
        (("threshold: 0.25", "threshold: 1.5"), ":12:16:", "less than or equal to 1"),
        (("probability: 0.7", "probability: 1.0"), ":17:18:", "less than 1"),
        # both rules at once / none
        (
            ("    probability: 0.7\n", "    probability: 0.7\n    threshold: 0.2\n"),
            ":14:5:",
            "exactly one decision rule",
        ),
        # an enum value
        (("severity: high", "severity: severe"), ":5:11:", "'low', 'medium', 'high' or"),
        # missing required key
        (("owner: tns@example.com\n", ""), ":1:1:", "owner: required key is missing"),
        # duplicate label names
        (("name: blade", "name: knife"), ":8:3:", "duplicate label names: knife"),
        # k > n
        (("{k: 2, n: 3,", "{k: 4, n: 3,"), ":18:11:", "k (4) cannot exceed n (3)"),
        # duplicate keys in one mapping (YAML would silently keep the last)
        (("version: 2\n", "version: 2\nversion: 3\n"), ":3:1:", "duplicate key 'version'"),
        # a template without its slot
        (
            ('templates: ["{}", "a photo of {}"]', 'templates: ["a photo of"]'),
            ":10:16:",
            "exactly one '{}'",
        ),
    ],
)
def test_validation_errors_name_file_line_and_column(edit, where, says):
    old, new = edit
    assert old in GOOD
    message = _error(GOOD.replace(old, new, 1))
    assert message.startswith("knives.yaml" + where) or f"knives.yaml{where}" in message, message
    assert says in message, message


def test_only_the_safe_loader_is_used():
    evil = GOOD.replace("owner: tns@example.com", "owner: !!python/object/apply:os.system [id]")
    message = _error(evil)
    assert "knives.yaml:4:8:" in message and "tag" in message and "not allowed" in message


def test_yaml_syntax_errors_and_non_mappings():
    assert "knives.yaml:3:" in _error("id: x\nversion: [1\ndescription: y\n")
    assert "empty" in _error("")
    assert "expected a mapping" in _error("- a\n- b\n")


def test_file_name_must_match_id_and_ids_are_unique(tmp_path):
    (tmp_path / "knife.yaml").write_text(GOOD)
    with pytest.raises(PolicyError, match=r"knife\.yaml:1:1: id: policy id 'knives' must match"):
        load_policy(tmp_path / "knife.yaml")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "knives.yaml").write_text(GOOD)
    (b / "knives.yaml").write_text(GOOD)
    with pytest.raises(PolicyError, match="duplicate policy id 'knives'"):
        load_policies([a, b])
    with pytest.raises(PolicyError, match="no such policy file"):
        load_policies([tmp_path / "missing"])


def test_all_errors_of_a_folder_are_reported_together(tmp_path):
    (tmp_path / "knives.yaml").write_text(GOOD.replace("version: 2", "version: 0"))
    (tmp_path / "guns.yaml").write_text(
        GOOD.replace("id: knives", "id: guns").replace("severity: high", "severity: 3")
    )
    with pytest.raises(PolicyError) as info:
        load_policies([tmp_path])
    lines = str(info.value).splitlines()
    assert any(line.startswith(str(tmp_path / "guns.yaml") + ":5:") for line in lines)
    assert any(line.startswith(str(tmp_path / "knives.yaml") + ":2:") for line in lines)


def test_shipped_policies_validate():
    ps = load_policies([DEMO_POLICIES])
    assert {lp.policy.id for lp in ps} >= {"red-triangle", "spam-text"}
    for lp in ps:
        assert lp.policy.model == "clipguard-demo"
        assert lp.path.stem == lp.policy.id


# -- compilation -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> CLIP:
    cfg = CLIPConfig(
        embed_dim=32,
        vision=VisionConfig(
            kind="vit", image_resolution=32, width=64, layers=1, heads=2, patch_size=16
        ),
        text=TextConfig(context_length=32, width=64, heads=2, layers=2),
    )
    m = CLIP(cfg)
    m.init_weights(torch.Generator().manual_seed(0))
    m.name = "tiny-test"
    return m.eval().requires_grad_(False)


def _write(folder: Path, text: str, name: str = "knives") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def _encode(model: CLIP, texts: list[str]) -> torch.Tensor:
    with torch.inference_mode():
        return F.normalize(model.encode_text(tokenize(texts, context_length=32)), dim=-1)


def test_compiled_matrix_equals_encoding_the_prompts(tmp_path, model):
    _write(tmp_path / "p", GOOD)
    compiled = (
        PolicyCompiler(model, cache_dir=tmp_path / "cache")
        .compile(load_policies([tmp_path / "p"]))
        .compiled
    )
    knife = next(lab for lab in compiled.labels if lab.key == "knives/knife")
    prompts = _encode(
        model, ["a knife", "a photo of a knife", "a kitchen knife", "a photo of a kitchen knife"]
    )
    expected = F.normalize(prompts.mean(dim=0), dim=-1)
    matrix = torch.from_numpy(compiled.matrix)
    torch.testing.assert_close(matrix[knife.row], expected, rtol=1e-5, atol=1e-6)
    negs = _encode(model, ["a fork", "a photo of a fork", "a spoon", "a photo of a spoon"])
    torch.testing.assert_close(matrix[list(knife.negative_rows)], negs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(matrix[list(knife.prompt_rows)], prompts, rtol=1e-5, atol=1e-6)
    assert torch.allclose(matrix.norm(dim=-1), torch.ones(len(matrix)))


def test_cache_hits_and_per_policy_invalidation(tmp_path, model):
    folder = tmp_path / "p"
    _write(folder, GOOD)
    _write(folder, GOOD.replace("id: knives", "id: guns").replace("a knife", "a gun"), "guns")
    cache = tmp_path / "cache"
    first = PolicyCompiler(model, cache_dir=cache)
    c1 = first.compile(load_policies([folder])).compiled
    assert (first.hits, first.misses) == (0, 2)
    assert len(list(cache.glob("*.safetensors"))) == 2

    second = PolicyCompiler(model, cache_dir=cache)
    second.encode_text = None  # type: ignore[assignment]  # a warm cache never encodes text
    c2 = second.compile(load_policies([folder])).compiled
    assert (second.hits, second.misses) == (2, 0)
    assert np.array_equal(c1.matrix, c2.matrix) and c1.labels == c2.labels

    # editing one policy's prompt recompiles that policy only
    _write(folder, GOOD.replace("a kitchen knife", "a pocket knife"))
    third = PolicyCompiler(model, cache_dir=cache)
    third.compile(load_policies([folder]))
    assert (third.hits, third.misses) == (1, 1)
    # a threshold edit changes no embedding: still a hit
    _write(folder, GOOD.replace("a kitchen knife", "a pocket knife").replace("0.25", "0.3"))
    fourth = PolicyCompiler(model, cache_dir=cache)
    fourth.compile(load_policies([folder]))
    assert (fourth.hits, fourth.misses) == (2, 0)
    # other weights: everything recompiles
    other = CLIP(model.config)
    other.init_weights(torch.Generator().manual_seed(1))
    other.name = model.name
    fifth = PolicyCompiler(other.eval(), cache_dir=cache)
    fifth.compile(load_policies([folder]))
    assert fifth.misses == 2


def test_corrupt_cache_entry_is_recompiled(tmp_path, model):
    _write(tmp_path / "p", GOOD)
    cache = tmp_path / "cache"
    PolicyCompiler(model, cache_dir=cache).compile(load_policies([tmp_path / "p"]))
    for f in cache.glob("*.safetensors"):
        f.write_bytes(b"garbage")
    again = PolicyCompiler(model, cache_dir=cache)
    again.compile(load_policies([tmp_path / "p"]))
    assert again.misses == 1


def test_exemplars_join_the_ensemble(tmp_path, model):
    import cv2

    folder = tmp_path / "p"
    img = np.zeros((40, 40, 3), np.uint8)
    img[:, :, 2] = 255  # BGR: red
    folder.mkdir()
    cv2.imwrite(str(folder / "red.png"), img)
    _write(
        folder,
        GOOD.replace(
            "    negatives: [a fork, a spoon]\n",
            "    negatives: [a fork, a spoon]\n    exemplars: [red.png]\n",
        ),
    )
    compiler = PolicyCompiler(model, cache_dir=tmp_path / "cache")
    compiled = compiler.compile(load_policies([folder])).compiled
    knife = next(lab for lab in compiled.labels if lab.key == "knives/knife")
    prompts = _encode(model, list(knife.prompts))
    # the exemplar is decoded and fitted to the model input exactly as frames are
    from pipeline.decode import DecodeOptions, decode_uri

    fitted = (
        decode_uri(folder / "red.png", DecodeOptions(size=model.input_resolution)).frames[0].image
    )
    assert fitted.shape == (32, 32, 3) and fitted[16, 16].tolist() == [255, 0, 0]  # RGB
    with torch.inference_mode():
        frame = torch.from_numpy(np.ascontiguousarray(fitted))[None]
        image = F.normalize(model.encode_image(model.preprocess(frame)), dim=-1)
    expected = F.normalize(torch.cat([prompts, image]).mean(dim=0), dim=-1)
    got = torch.from_numpy(compiled.matrix[knife.row])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    (folder / "red.png").write_bytes(b"not an image")  # new bytes: new key, and a clear error
    with pytest.raises(PolicyError, match=r"red\.png"):
        PolicyCompiler(model, cache_dir=tmp_path / "cache").compile(load_policies([folder]))


# -- decisions on constructed embeddings -------------------------------------------------------


def _constructed(threshold=None, probability=None, margin=None) -> CompiledPolicies:
    # rows: 0 label ensemble = e0, 1-2 negatives = e1, e2, 3-4 prompts = e0, (e0+e3)/|.|
    eye = np.eye(4, dtype=np.float32)
    p2 = (eye[0] + eye[3]) / np.linalg.norm(eye[0] + eye[3])
    matrix = np.stack([eye[0], eye[1], eye[2], eye[0], p2])
    label = CompiledLabel(
        policy="p",
        label="l",
        key="p/l",
        version=1,
        severity="low",
        action="flag",
        mode="enforce",
        row=0,
        negative_rows=(1, 2),
        prompt_rows=(3, 4),
        prompts=("plain", "mixed"),
        threshold=threshold,
        probability=probability,
        margin=margin,
    )
    return CompiledPolicies(matrix=matrix, labels=(label,), logit_scale=10.0, policy_set="x")


def test_threshold_margin_and_probability_decisions():
    frames = torch.tensor(
        [
            [0.8, 0.6, 0.0, 0.0],  # cos 0.8 with the label, 0.6 with negative 1: margin 0.2
            [0.6, 0.8, 0.0, 0.0],  # the negative wins: margin -0.2
            [0.3, 0.0, 0.0, 0.954],  # close to the "mixed" prompt
        ]
    )
    frames = F.normalize(frames, dim=-1)
    d = _constructed(threshold=0.5).decide(frames)
    assert [x[0].passed for x in d] == [True, True, False]
    assert d[0][0].margin == pytest.approx(0.2, abs=1e-4)
    assert d[1][0].margin == pytest.approx(-0.2, abs=1e-4)
    assert d[2][0].top_prompt == "mixed" and d[0][0].top_prompt == "plain"
    # softmax at logit scale 10 over [0.8, 0.6, 0.0]
    e = np.exp(10 * np.array([0.8, 0.6, 0.0]))
    assert d[0][0].probability == pytest.approx(e[0] / e.sum(), rel=1e-4)

    with_margin = _constructed(threshold=0.5, margin=0.1)
    assert [x[0].passed for x in with_margin.decide(frames)] == [
        True,
        False,
        False,
    ]
    # frame 3 is far from the label (0.3) but farther from both negatives (0.0): the softmax
    # against the negatives still favours the label, which is what `probability` measures
    prob = _constructed(probability=0.8)
    assert [x[0].passed for x in prob.decide(frames)] == [True, False, True]


def test_demo_policies_compile_with_the_demo_model(tmp_path):
    demo = load_clip("clipguard-demo")
    compiled = (
        PolicyCompiler(demo, cache_dir=tmp_path).compile(load_policies([DEMO_POLICIES])).compiled
    )
    assert {lab.key for lab in compiled.labels} >= {
        "red-triangle/red-triangle",
        "spam-text/spam-text",
    }
    assert compiled.matrix.shape[1] == demo.embed_dim


# -- live reload -------------------------------------------------------------------------------


def _touch_later(path: Path, text: str) -> None:
    """Rewrite with a different mtime even on coarse file-system clocks."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    import os

    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))


def test_store_reloads_edits_and_keeps_the_last_good_set(tmp_path, model, caplog):
    from pipeline.policies.store import PolicyStore

    folder = tmp_path / "p"
    path = _write(folder, GOOD)
    store = PolicyStore([folder], PolicyCompiler(model, cache_dir=tmp_path / "cache"))
    first = store.current
    assert store.refresh() is False  # nothing changed

    _touch_later(
        path, GOOD.replace("version: 2", "version: 3").replace("a kitchen knife", "a pocket knife")
    )
    assert store.refresh() is True
    assert store.current.get("knives").policy.version == 3
    assert store.current.id != first.id
    assert (
        "a pocket knife"
        in next(lab for lab in store.current.compiled.labels if lab.key == "knives/knife").prompts
    )
    good = store.current

    _touch_later(path, GOOD.replace("threshold: 0.25", "threshold: [oops"))  # broken YAML
    assert store.refresh() is False
    assert store.reload_errors == 1 and "knives.yaml" in (store.last_error or "")
    assert store.current is good  # the last good set stays in force
    assert "keeping the last good policies" in caplog.text
    assert store.refresh() is False and store.reload_errors == 1  # not retried until it changes
    # written again as it was (an editor saving in two steps): the same error, counted once
    _touch_later(path, GOOD.replace("threshold: 0.25", "threshold: [oops"))
    assert store.refresh() is False and store.reload_errors == 1
    _touch_later(path, GOOD.replace("threshold: 0.25", "threshold: {oops"))  # another break
    assert store.refresh() is False and store.reload_errors == 2

    _touch_later(path, GOOD.replace("version: 2", "version: 4"))
    assert store.refresh() is True
    assert store.current.get("knives").policy.version == 4 and store.last_error is None

    _write(folder, GOOD.replace("id: knives", "id: guns"), "guns")  # a new file joins
    assert store.refresh() is True and len(store.current) == 2


def test_encoder_returns_unit_embeddings_in_batches(model):
    from pipeline.models.encoders import reference_encoder

    frames = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    small = reference_encoder(model, batch_size=2).encode(frames)
    whole = reference_encoder(model, batch_size=8).encode(list(frames))
    assert small.shape == (5, 32) and small.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(small, axis=-1), np.ones(5), rtol=1e-5)
    np.testing.assert_allclose(small, whole, rtol=1e-5, atol=1e-6)
    assert reference_encoder(model).encode([]).shape == (0, 32)
    with pytest.raises(Exception, match="uint8"):
        reference_encoder(model).encode(frames.astype(np.float32))  # type: ignore[arg-type]
