"""What broke or misbehaved on the transformers versions the pins allow, each pinned down by a test.

transformers 5.24 renamed the cache `past_key_values` to `cache`; the library's idioms (padding flags, bf16 loading,
torch.compile, `experts_implementation=`) must work on our model as on the library's own.
"""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoProcessor, AutoTokenizer, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, MoeCausalLMOutputWithPast

from modeling_moe_audio import MoEAudioForCausalLM
from modeling_moe_audio.checkpoints.build import bind_processor, new_processor
from modeling_moe_audio.modeling_moe_audio import (
    CACHE_FIELD,
    MoEAudioCausalLMOutputWithPast,
    MoEAudioModelOutputWithPast,
)
from modeling_moe_audio.presets import TINY_TOKENIZER, load_config

from conftest import make_audio_batch, make_input_ids, tiny_model, tokens_for


MEL_LENGTHS = [3000, 1500]


@pytest.fixture
def batch(model):
    features, mask = make_audio_batch(model.config, MEL_LENGTHS)
    input_ids, attention_mask = make_input_ids(
        model.config, tokens_for(MEL_LENGTHS, model.config), [5, 9], padding_side="left"
    )
    return {"input_ids": input_ids, "attention_mask": attention_mask, "input_features": features,
            "input_features_mask": mask}


@pytest.fixture
def processor_and_model():
    config = load_config("tiny")
    processor = new_processor(config, AutoTokenizer.from_pretrained(TINY_TOKENIZER))
    bind_processor(config, processor)
    torch.manual_seed(0)
    return processor, MoEAudioForCausalLM(config).eval()


def clips():
    rng = np.random.default_rng(0)
    return [0.1 * rng.standard_normal(16000).astype(np.float32), 0.1 * rng.standard_normal(4000).astype(np.float32)]


# --- the cache rename ------------------------------------------------------------------------------------------------


def test_output_classes_extend_the_library_outputs():
    assert issubclass(MoEAudioModelOutputWithPast, BaseModelOutputWithPast)
    assert issubclass(MoEAudioCausalLMOutputWithPast, MoeCausalLMOutputWithPast)
    for ours, library in ((MoEAudioModelOutputWithPast, BaseModelOutputWithPast),
                          (MoEAudioCausalLMOutputWithPast, MoeCausalLMOutputWithPast)):
        assert set(library.__dataclass_fields__) <= set(ours.__dataclass_fields__)
    assert CACHE_FIELD in MoeCausalLMOutputWithPast.__dataclass_fields__


def test_cache_comes_back_under_the_installed_name_and_is_taken_under_both(model, batch):
    with torch.no_grad():
        full = model(**batch, use_cache=True)
        cache = full[CACHE_FIELD]
        assert isinstance(cache, DynamicCache) and cache.get_seq_length() == batch["input_ids"].shape[1]

        next_ids = torch.tensor([[7], [11]])
        longer = {**batch, "input_ids": torch.cat([batch["input_ids"], next_ids], 1),
                  "attention_mask": torch.cat([batch["attention_mask"], torch.ones(2, 1, dtype=torch.long)], 1)}
        reference = model(**longer).logits[:, -1]
        for name in ("cache", "past_key_values"):
            step = model(input_ids=next_ids, attention_mask=longer["attention_mask"], use_cache=True,
                         **{name: model(**batch, use_cache=True)[CACHE_FIELD]})
            torch.testing.assert_close(step.logits[:, -1], reference, atol=1e-5, rtol=1e-5)


def test_generate_with_and_without_cache_and_tuple_outputs(model, batch):
    with_cache = model.generate(**batch, max_new_tokens=5, do_sample=False)
    without_cache = model.generate(**batch, max_new_tokens=5, do_sample=False, use_cache=False)
    assert torch.equal(with_cache, without_cache)
    as_tuple = model(**batch, labels=batch["input_ids"], return_dict=False)
    as_output = model(**batch, labels=batch["input_ids"])
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_output.loss)


# --- the processor's padding ----------------------------------------------------------------------------------------


def test_padding_true_pads_text_but_keeps_full_whisper_windows(processor_and_model):
    processor, model = processor_and_model
    text = [f"hi {processor.audio_token}", f"a longer question {processor.audio_token}"]
    inputs = processor(text=text, audio=clips(), sampling_rate=16000, padding=True)
    assert inputs["input_features"].shape[-1] == processor.feature_extractor.nb_max_frames
    assert inputs["input_features_mask"][1].sum() < inputs["input_features_mask"][0].sum()
    model(**inputs)

    conversations = [
        [{"role": "user", "content": [{"type": "audio", "audio": clip}, {"type": "text", "text": question}]}]
        for clip, question in zip(clips(), ["q", "a longer question"])
    ]
    chat = processor.apply_chat_template(conversations, tokenize=True, return_dict=True, add_generation_prompt=True,
                                         padding=True, processor_kwargs={"sampling_rate": 16000})
    assert chat["input_features"].shape[-1] == processor.feature_extractor.nb_max_frames
    model(**chat)


def test_a_tokenizer_saved_after_right_padding_still_pads_left(processor_and_model, tmp_path):
    processor, _ = processor_and_model
    processor(text=["a", "a b c"], padding_side="right")  # what the training collator does
    processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    batch = reloaded(text=["a", "a b c d e f"])
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][0, -1] == 1
    assert reloaded(text=["a", "a b c d e f"], padding_side="right")["attention_mask"][0, -1] == 0


# --- dtypes, kernels, compile ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_model_takes_the_processors_float32_features(processor_and_model, dtype):
    processor, model = processor_and_model
    inputs = processor(text=[f"hi {processor.audio_token}"], audio=clips()[:1], sampling_rate=16000)
    assert inputs["input_features"].dtype == torch.float32
    reference = model(**inputs).logits
    half = model.to(dtype)(**inputs).logits
    assert half.dtype == dtype
    assert (half.float() - reference).abs().max() < 0.1 * reference.abs().max()
    assert model.generate(**inputs, max_new_tokens=3, do_sample=False).shape[1] == inputs["input_ids"].shape[1] + 3


@pytest.mark.parametrize("implementation", ["eager", "grouped_mm", "batched_mm"])
def test_from_pretrained_experts_implementation_works_like_set_experts_implementation(batch, tmp_path,
                                                                                       implementation):
    tiny_model().save_pretrained(tmp_path)
    loaded = MoEAudioForCausalLM.from_pretrained(tmp_path, experts_implementation=implementation).eval()
    assert loaded.config._experts_implementation == implementation
    switched = MoEAudioForCausalLM.from_pretrained(tmp_path).eval()
    switched.set_experts_implementation(implementation)
    assert switched.config._experts_implementation == implementation
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, switched(**batch).logits)
    remote = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True,
                                                  experts_implementation=implementation)
    assert remote.config._experts_implementation == implementation


def test_dynamo_traces_the_default_kernel_in_float32(model, batch):
    """torch's meta kernel of grouped_mm takes bf16 only: under torch.compile the float32 model needs the fallback."""
    assert model.config._experts_implementation == "grouped_mm"
    compiled = torch.compile(model, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(**batch).logits, model(**batch).logits)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_forward_and_generate_match_eager(dtype):
    model = tiny_model()
    features, mask = make_audio_batch(model.config, MEL_LENGTHS)
    input_ids, attention_mask = make_input_ids(
        model.config, tokens_for(MEL_LENGTHS, model.config), [5, 9], padding_side="left"
    )
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "input_features": features,
             "input_features_mask": mask}
    with torch.no_grad():
        float32_logits = model(**batch).logits
        model.to(dtype)
        eager_logits = model(**batch).logits.float()
        eager_tokens = model.generate(**batch, max_new_tokens=4, do_sample=False)
        compiled_logits = torch.compile(model)(**batch).logits.float()
        model.forward = torch.compile(model.forward)
        compiled_tokens = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert torch.equal(compiled_tokens, eager_tokens)
    if dtype == torch.float32:
        torch.testing.assert_close(compiled_logits, eager_logits, atol=1e-5, rtol=1e-5)
    else:  # inductor keeps bf16 intermediates in float32: as close to the float32 model as eager bf16, not equal to it
        eager_error = (eager_logits - float32_logits).abs()
        compiled_error = (compiled_logits - float32_logits).abs()
        assert compiled_error.max() <= 1.5 * eager_error.max()
        assert compiled_error.mean() <= 1.5 * eager_error.mean()


# --- audio files ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["soundfile", "soxr"])
def test_decoding_a_file_without_the_audio_packages_says_what_to_install(tmp_path, missing):
    import soundfile

    path = tmp_path / "clip.wav"
    soundfile.write(path, clips()[0], 22050)
    code = f"""
        import sys
        sys.modules[{missing!r}] = None  # as if it were not installed
        from modeling_moe_audio.processing_moe_audio import load_audio
        try:
            load_audio({str(path)!r})
        except ImportError as error:
            print(str(error))
        else:
            raise SystemExit("decoded without {missing}")
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    message = result.stdout
    assert "soundfile" in message and "soxr" in message and "transformers[audio]" in message


def test_readme_client_snippet_says_what_to_install_for_files():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    snippet = readme[readme.index("Then, in any Python with `transformers`"):readme.index("Without a chat template")]
    assert "transformers[audio]" in snippet or ("soundfile" in snippet and "soxr" in snippet)


# --- a trained checkpoint -------------------------------------------------------------------------------------------


def test_batched_generate_from_a_trained_checkpoint_equals_one_row_at_a_time(tmp_path):
    from modeling_moe_audio.checkpoints.build import init_checkpoint
    from modeling_moe_audio.data.corpus import write_corpus
    from modeling_moe_audio.presets import shipped_tokenizer
    from modeling_moe_audio.commands.train import build_parser
    from modeling_moe_audio.training.trainer import train

    corpus = write_corpus(tmp_path / "corpus", seed=1, sizes={"train": 8, "validation": 2, "test": 4})
    init_checkpoint(load_config("tiny-4s"), tmp_path / "init", tokenizer=shipped_tokenizer("tiny-4s"), seed=0)
    script_args, training_args = build_parser().parse_args_into_dataclasses(args=[
        "--model", str(tmp_path / "init"), "--train_data", str(corpus["train"]), "--output_dir",
        str(tmp_path / "trained"), "--use_cpu", "--report_to", "none", "--disable_tqdm", "true", "--max_steps", "2",
        "--per_device_train_batch_size", "4", "--save_strategy", "no",
    ])
    train(script_args, training_args)

    processor = AutoProcessor.from_pretrained(tmp_path / "trained", trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "trained", trust_remote_code=True).eval()
    rows = [json.loads(line) for line in corpus["test"].read_text().splitlines()][:2]
    conversations = [[{"role": "user", "content": [
        {"type": "audio", "path": str(corpus["test"].parent / row["audio"])},
        {"type": "text", "text": question},
    ]}] for row, question in zip(rows, ["Which kind of sound is it?", "What is heard in this clip, in one word?"])]

    def answer(conversation_batch):
        inputs = processor.apply_chat_template(conversation_batch, tokenize=True, return_dict=True,
                                               add_generation_prompt=True)
        output = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        return processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    assert answer(conversations) == answer(conversations[:1]) + answer(conversations[1:])
