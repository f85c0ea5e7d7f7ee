"""``model.path=tiny`` / ``world`` resolved outside the core, with the identities that saved runs carry."""

import ast
from pathlib import Path

from lora_core.embedded.tiny_model import TinyModelSpec
from lora_core.embedded.world_weights import verified_world_dir
from lora_core.models import ModelSource, model_identity
from sweeper.config.embedded_models import base_model

CORE = Path(__file__).resolve().parent.parent / "lora_core"


def test_tiny_resolves_to_its_built_folder_named_by_its_fingerprint(cache_dir):
    tiny = base_model(ModelSource(path="tiny", device="cpu"), tiny_seed=3, cache_dir=cache_dir)
    assert (Path(tiny.path) / "model_index.json").is_file() and Path(tiny.path).parent == cache_dir
    assert model_identity(tiny) == f"tiny-{TinyModelSpec(seed=3).fingerprint()}" and tiny.device == "cpu"


def test_world_resolves_to_its_checked_pipeline_folder_named_by_its_content_hash():
    world = base_model(ModelSource(path="world"))
    root, content_hash = verified_world_dir()
    assert world.path == str(root / "sd") and model_identity(world) == f"world-{content_hash}"


def test_any_other_model_path_is_left_as_it_is():
    source = ModelSource(path="someone/model", revision="v1")
    assert base_model(source) is source


def test_the_core_never_imports_the_embedded_models():
    for path in CORE.rglob("*.py"):
        if "embedded" in path.relative_to(CORE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or "", *(f"{node.module}.{a.name}" for a in node.names)]
            assert not any(n.startswith("lora_core.embedded") for n in names), f"{path} imports {names}"
