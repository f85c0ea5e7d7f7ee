import pytest
import torch

from lora_core.errors import UserInputError
from lora_core.models import ModelSource, load_pipeline, model_identity, resolve_device, resolve_dtype


def test_pipeline_is_loaded_once_per_process(tiny_source, pipe):
    assert load_pipeline(tiny_source) is pipe


def test_tiny_pipeline_comes_through_from_pretrained_on_cpu_in_float32(pipe):
    assert pipe.unet.dtype == torch.float32 and pipe.device.type == "cpu"
    assert pipe.safety_checker is None
    assert pipe.tokenizer.model_max_length == 77


def test_local_folder_loads_like_a_hub_model(pipe, tiny_source, tmp_path):
    folder = tmp_path / "my-model"
    pipe.save_pretrained(folder)
    loaded = load_pipeline(ModelSource(path=str(folder), device="cpu"))
    assert loaded is not pipe
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.unet.state_dict().values(), pipe.unet.state_dict().values(), strict=True)
    )


def test_folder_that_is_not_a_pipeline_is_named(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(UserInputError, match=r"model_index\.json") as err:
        load_pipeline(ModelSource(path=str(tmp_path), device="cpu"))
    assert str(tmp_path) in str(err.value)


def test_unreachable_hub_id_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserInputError, match=r"model.path=someone/no-such-model.*local folder"):
        load_pipeline(ModelSource(path="someone/no-such-model", device="cpu", local_files_only=True))


def test_missing_checkpoint_file_is_named(tmp_path):
    with pytest.raises(UserInputError, match="no such checkpoint"):
        load_pipeline(ModelSource(path=str(tmp_path / "model.safetensors"), device="cpu"))


def test_auto_device_and_dtype_fit_the_machine():
    device = resolve_device("auto")
    assert device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda") == torch.float16
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16


@pytest.mark.parametrize("bad", ["float8", "half-ish"])
def test_unknown_dtype_is_named(bad):
    with pytest.raises(UserInputError, match=f"model.dtype={bad}"):
        resolve_dtype(bad, "cpu")


def test_float16_on_cpu_is_refused():
    with pytest.raises(UserInputError, match="float16 on the CPU"):
        resolve_dtype("float16", "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where there is no GPU")
def test_cuda_without_a_gpu_is_refused():
    with pytest.raises(UserInputError, match="no CUDA device"):
        resolve_device("cuda")


def test_model_identity_separates_sources(tiny_source, tmp_path):
    assert model_identity(tiny_source) != model_identity(ModelSource(path=str(tmp_path)))
    assert model_identity(ModelSource(path="a/b", revision="v1")) != model_identity(ModelSource(path="a/b"))
