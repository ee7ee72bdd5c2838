"""open_clip's plain-CLIP checkpoints against open_clip's own model classes; the model registry's
families, licences and Hugging Face downloads.

Parity on random weights in fp32 (relative error under 1e-5): a GELU ViT-B/16 (LAION,
DataComp), and a DFN-style model (QuickGELU, non-64 head width, non-4x MLP, other pixel
statistics) at a small size; ViT-H/14 and ViT-bigG/14 compared by keys and shapes on the meta
device. Downloads run against a local HTTP server laid out as Hugging Face serves files.
"""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from consumers.cli import main
from pipeline.errors import LicenseNotAccepted, WeightsFormatError, WeightsNotFound
from pipeline.models import CLIP, load_model
from pipeline.models.download import download_model
from pipeline.models.model import CLIP as CLIPModule
from pipeline.models.model import config_from_state_dict
from pipeline.models.openclip import read_open_clip_config, vision_heads_for_width
from pipeline.models.registry import get_model_info, list_models
from pipeline.models.siglip import SigLIP, SiglipConfig
from pipeline.models.siglip_formats import siglip_config_from_state_dict
from pipeline.models.tokenizer import tokenize

_TOL = 1e-5


@pytest.fixture(scope="module")
def open_clip():
    from openclip_ref import import_open_clip

    return import_open_clip()


def _rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float(((ours - ref).norm(dim=-1) / ref.norm(dim=-1)).max())


def _randomise(model: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel() if p.ndim > 1 else 16
                p.copy_(torch.randn(p.shape, generator=gen) * fan_in**-0.5)


def _publish(model, model_cfg: dict, folder: Path, mean, std) -> None:
    """What open_clip publishes on Hugging Face: the weights and open_clip_config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    config = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": list(mean), "std": list(std)}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))


def _compare(ref, ours: CLIP, res: int) -> None:
    pixels = torch.randn(3, 3, res, res, generator=torch.Generator().manual_seed(1))
    tokens = tokenize(["a photo of a knife", "two people fighting", "x", "an empty street"])
    with torch.no_grad():
        ref_img, ref_txt = ref.encode_image(pixels), ref.encode_text(tokens)
        img, txt = ours.encode_image(pixels), ours.encode_text(tokens)
    assert _rel_err(img, ref_img) < _TOL
    assert _rel_err(txt, ref_txt) < _TOL


def test_gelu_vit_b16_parity(open_clip, tmp_path):
    """LAION-2B and DataComp ViT-B/16: open_clip's ViT-B-16 config, GELU, OpenAI statistics."""
    torch.manual_seed(0)
    ref = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    _randomise(ref)
    cfg = open_clip.get_model_config("ViT-B-16")
    _publish(ref, cfg, tmp_path, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
    ours = load_model(tmp_path)
    assert isinstance(ours, CLIP)
    assert ours.config.activation == "gelu"
    assert ours.config.vision.heads == 12
    assert ours.image_mean == pytest.approx(open_clip.OPENAI_DATASET_MEAN)
    _compare(ref, ours, 224)


def test_dfn_style_parity(open_clip, tmp_path):
    """DFN (and MetaCLIP): QuickGELU; with a head width other than 64, an MLP other than 4x
    (as ViT-H/14 and ViT-bigG/14 have) and 0.5 pixel statistics, at a small size."""
    from open_clip.model import CLIP as OpenClipCLIP

    vision = {"image_size": 32, "layers": 2, "width": 160, "head_width": 80, "patch_size": 8}
    vision["mlp_ratio"] = 4.9231
    text = {"context_length": 77, "vocab_size": 49408, "width": 96, "heads": 3, "layers": 2}
    model_cfg = {"embed_dim": 64, "quick_gelu": True, "vision_cfg": vision, "text_cfg": text}
    torch.manual_seed(0)
    ref = OpenClipCLIP(embed_dim=64, vision_cfg=vision, text_cfg=text, quick_gelu=True).eval()
    _randomise(ref)
    _publish(ref, model_cfg, tmp_path, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    ours = load_model(tmp_path / "open_clip_model.safetensors")
    assert isinstance(ours, CLIP)
    assert ours.config.activation == "quick_gelu"
    assert ours.config.vision.heads == 2 and ours.config.text.heads == 3
    assert ours.config.vision.mlp_width == int(160 * 4.9231)
    assert ours.image_mean == (0.5, 0.5, 0.5) and ours.image_std == (0.5, 0.5, 0.5)
    _compare(ref, ours, 32)


@pytest.mark.parametrize(
    ("arch", "entry", "heads", "mlp"),
    [("ViT-H-14", "ViT-H-14-laion2b", 16, 0), ("ViT-bigG-14", "ViT-bigG-14-laion2b", 16, 8192)],
)
def test_big_towers_on_the_meta_device(open_clip, arch, entry, heads, mlp):
    """Keys and shapes of open_clip's ViT-H/14 and ViT-bigG/14 are ours; the head count comes
    from the open_clip config, the width table, or the registry entry."""
    with torch.device("meta"):
        ref = open_clip.create_model(arch, pretrained=None, device="meta")
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    config = config_from_state_dict(
        ref.state_dict(), vision_heads=vision_heads_for_width(ref.visual.conv1.weight.shape[0])
    )
    assert config.vision.heads == heads == ref.visual.transformer.resblocks[0].attn.num_heads
    assert config.vision.mlp_width == mlp
    assert config.text.heads == ref.transformer.resblocks[0].attn.num_heads
    registry = get_model_info(entry).config
    assert registry.vision == config.vision and registry.text == config.text
    with torch.device("meta"):
        ours = CLIPModule(config)
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == ref_shapes


@pytest.mark.parametrize(
    ("vision", "text", "feature"),
    [
        ({"no_ln_pre": True, "pool_type": "avg"}, {}, "vision_cfg"),  # CLIPA
        ({}, {"pool_type": "eos"}, "text_cfg.pool_type"),  # MetaCLIP 2 worldwide
        ({}, {"no_causal_mask": True}, "no_causal_mask"),
        ({"timm_model_name": "vit_base_patch16_224"}, {}, "timm_model_name"),
        ({}, {"hf_model_name": "xlm-roberta-base"}, "hf_model_name"),
        ({"ls_init_value": 1e-4}, {}, "ls_init_value"),
        ({"layers": [3, 4, 6, 3]}, {}, "layers"),
    ],
)
def test_unsupported_open_clip_features_are_named(tmp_path, vision, text, feature):
    cfg = {
        "model_cfg": {
            "embed_dim": 512,
            "vision_cfg": {"width": 768, "layers": 12, "patch_size": 16, **vision},
            "text_cfg": {"width": 512, "heads": 8, "layers": 12, **text},
        }
    }
    path = tmp_path / "open_clip_config.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(WeightsFormatError, match=feature):
        read_open_clip_config(path)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("[]", "model_cfg"),
        ("{bad", "unreadable"),
        ('{"model_cfg": {"quick_gelu": "yes"}}', "quick_gelu"),
        ('{"model_cfg": {"vision_cfg": {"width": 100, "head_width": 64}}}', "multiple"),
        ('{"model_cfg": {}, "preprocess_cfg": {"std": [0, 1, 1]}}', "positive"),
        ('{"model_cfg": {}, "preprocess_cfg": {"mean": "grey"}}', "three numbers"),
        ('{"model_cfg": {"init_logit_bias": -10}}', "init_logit_bias"),
    ],
)
def test_hostile_open_clip_config(tmp_path, doc, message):
    path = tmp_path / "open_clip_config.json"
    path.write_text(doc)
    with pytest.raises(WeightsFormatError, match=message):
        read_open_clip_config(path)


def test_head_width_table():
    assert vision_heads_for_width(768) == 12  # OpenAI B
    assert vision_heads_for_width(1024) == 16  # OpenAI L
    assert vision_heads_for_width(1280) == 16  # H/14, head width 80
    assert vision_heads_for_width(1664) == 16  # bigG/14, head width 104
    assert vision_heads_for_width(1408) == 16  # g/14, head width 88


# --- registry: families, licences, Hugging Face downloads ---------------------------------


@pytest.mark.parametrize(
    "info", [m for m in list_models() if m.hf is not None], ids=lambda m: m.name
)
def test_every_hugging_face_entry_instantiates_with_its_shapes(info):
    """Each entry's architecture builds, runs (on the meta device) and is what its weights'
    shapes read back as, given what the shapes cannot say (heads, activation, image size)."""
    with torch.device("meta"):
        model = (
            SigLIP(info.config)
            if isinstance(info.config, SiglipConfig)
            else CLIPModule(info.config)
        )
    state = model.state_dict()
    if isinstance(info.config, SiglipConfig):
        v, t = info.config.vision, info.config.text
        hf_config = {
            "vision_config": {"num_attention_heads": v.heads, "image_size": v.image_size},
            "text_config": {"num_attention_heads": t.heads},
        }
        assert siglip_config_from_state_dict(state, hf_config) == info.config
        assert siglip_config_from_state_dict(state).vision.heads == v.heads  # the width table
        assert info.family == info.config.family
    else:
        assert info.family == "clip"
        heads = {"vision_heads": info.config.vision.heads, "text_heads": info.config.text.heads}
        read = config_from_state_dict(state, **heads, activation=info.config.activation)
        assert read == info.config
        assert vision_heads_for_width(info.config.vision.width) == info.config.vision.heads
    res = info.image_resolution
    image = model.encode_image(torch.empty(2, 3, res, res, device="meta"))
    tokens = torch.zeros(2, info.text_context, dtype=torch.long, device="meta")
    assert tuple(image.shape) == (2, info.embed_dim)
    assert tuple(model.encode_text(tokens).shape) == (2, info.embed_dim)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("CLIPGUARD_CACHE_DIR", str(path))
    monkeypatch.delenv("CLIPGUARD_MODEL_MIRROR", raising=False)
    monkeypatch.delenv("CLIPGUARD_ACCEPT_LICENSES", raising=False)
    return path


class _Quiet(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def do_GET(self) -> None:
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, list[str]]]:
    """A local server laid out as Hugging Face serves files: /{repo}/resolve/{revision}/{file};
    set as the mirror."""
    root = tmp_path / "hub"
    root.mkdir()
    requests: list[str] = []
    handler = type("Handler", (_Quiet,), {"requests": requests})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(root))
    )
    monkeypatch.setenv("CLIPGUARD_MODEL_MIRROR", f"http://127.0.0.1:{httpd.server_address[1]}")
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield root, requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _serve_repo(root: Path, repo: str, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = root / repo / "resolve" / "main" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_restricted_licence_is_refused_until_accepted(cache, monkeypatch):
    name = "ViT-B-16-metaclip-400m"
    for attempt in (lambda: load_model(name), lambda: download_model(name)):
        with pytest.raises(LicenseNotAccepted) as err:
            attempt()
        assert "cc-by-nc-4.0" in str(err.value)
        assert "CLIPGUARD_ACCEPT_LICENSES" in str(err.value)
    with pytest.raises(WeightsNotFound):  # accepted by argument: now it only lacks the weights
        load_model(name, accept_licenses=["CC-BY-NC-4.0"])
    monkeypatch.setenv("CLIPGUARD_ACCEPT_LICENSES", "apache-2.0, cc-by-nc-4.0")
    with pytest.raises(WeightsNotFound, match="clipguard models download"):
        load_model(name)


def test_cli_download_of_a_restricted_model_names_licence_and_setting(cache, capsys):
    assert main(["models", "download", "ViT-B-16-metaclip-400m"]) == 1
    err = capsys.readouterr().err
    assert "cc-by-nc-4.0" in err and "CLIPGUARD_ACCEPT_LICENSES=cc-by-nc-4.0" in err
    assert "Traceback" not in err


def test_models_list_shows_family_and_licence(cache, capsys):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()}
    assert "siglip2" in rows["siglip2-base-patch16-224"].split()
    assert "apache-2.0" in rows["siglip2-base-patch16-224"]
    assert "cc-by-nc-4.0*" in rows["ViT-B-16-metaclip-400m"]
    assert " clip " in rows["ViT-B/32"]
    assert "CLIPGUARD_ACCEPT_LICENSES" in out
    assert main(["models", "list", "--json"]) == 0
    by_name = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    entry = by_name["siglip2-base-patch16-224"]
    assert entry["family"] == "siglip2" and entry["license"] == "apache-2.0"
    assert entry["text_context"] == 64 and entry["image_resolution"] == 224
    assert entry["source"] == "hf:google/siglip2-base-patch16-224@main"
    assert by_name["ViT-H-14-laion2b"]["embed_dim"] == 1024


def test_hugging_face_layout_download(cache, hub):
    root, requests = hub
    info = get_model_info("siglip2-base-patch16-224")
    assert info.hf is not None
    files = {f.name: f"contents of {f.name}".encode() for f in info.hf.files}
    _serve_repo(root, info.hf.repo, files)
    path = download_model(info.name)
    assert path == info.path() == cache / "siglip2-base-patch16-224" / "model.safetensors"
    for name, data in files.items():
        assert (path.parent / name).read_bytes() == data
    assert sorted(requests) == sorted(
        f"/google/siglip2-base-patch16-224/resolve/main/{name}" for name in files
    )
    assert not list(path.parent.glob("*.part"))
    download_model(info.name)  # present: nothing fetched again
    assert len(requests) == len(files)
    download_model(info.name, force=True)
    assert len(requests) == 2 * len(files)


def test_hugging_face_download_checks_a_published_sha256(cache, hub, monkeypatch):
    import dataclasses
    import hashlib

    from pipeline.errors import ChecksumMismatch
    from pipeline.models import zoo
    from pipeline.models.registry import HFFile

    root, _ = hub
    base = get_model_info("siglip-base-patch16-224")
    assert base.hf is not None
    good = b"the published weights"
    pinned = dataclasses.replace(
        base,
        name="pinned-siglip",
        filename="pinned-siglip/model.safetensors",
        hf=dataclasses.replace(
            base.hf,
            files=(HFFile("model.safetensors", hashlib.sha256(good).hexdigest()),),
        ),
    )
    monkeypatch.setattr(zoo, "ZOO_MODELS", (*zoo.ZOO_MODELS, pinned))
    _serve_repo(root, base.hf.repo, {"model.safetensors": b"tampered weights"})
    with pytest.raises(ChecksumMismatch, match="expected SHA-256"):
        download_model("pinned-siglip")
    assert not (cache / "pinned-siglip" / "model.safetensors").exists()
    _serve_repo(root, base.hf.repo, {"model.safetensors": good})
    assert download_model("pinned-siglip").read_bytes() == good


def test_missing_file_on_the_hub_is_a_download_error(cache, hub):
    from pipeline.errors import DownloadError

    with pytest.raises(DownloadError, match="404"):
        download_model("ViT-B-32-laion2b")


def test_registry_name_with_other_weights_is_refused(cache, tmp_path):
    """Weights downloaded under a registry name must be that model (sizes and family)."""
    import transformers

    cfg = transformers.SiglipConfig(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_attention_heads": 2,
            "num_hidden_layers": 1,
            "image_size": 32,
            "patch_size": 8,
        },
        text_config={
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_attention_heads": 2,
            "num_hidden_layers": 1,
            "vocab_size": 100,
        },
    )
    folder = get_model_info("siglip-base-patch16-224").path().parent
    transformers.SiglipModel(cfg).save_pretrained(folder)
    with pytest.raises(WeightsFormatError, match="does not hold siglip-base-patch16-224"):
        load_model("siglip-base-patch16-224")
