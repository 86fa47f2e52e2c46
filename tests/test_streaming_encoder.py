"""Moonshine Streaming's encoder path (issue 20): exact per clip, the sliding windows on, and the measured
reason a padded batch is not used for it. Real-shaped random weights (the tiny architecture) and real
synthetic speech (espeak-ng)."""

import numpy as np
import pytest
import torch

from conftest import tiny_arch_streaming_config
from moonlora.configs import DecodeConfig
from moonlora.data.synth import espeak
from moonlora.errors import ConfigError
from moonlora.model.encoder import encode_exact, pad_states
from moonlora.model.loading import bundled_feature_extractor
from moonlora.model.streaming_encoder import STREAMING_PATH, clip_inputs, layers
from moonlora.model.torch_decoder import TorchDecoder
from moonlora.train.loop import EncoderCache, StemCache, batch_loss

PHRASES = ("cleared to land runway two seven", "contact tower one one eight decimal five", "roger", "hold short")


@pytest.fixture(scope="module")
def tiny_architecture():
    """A random-init Moonshine Streaming with the published tiny architecture (transformers' defaults)."""
    from transformers import MoonshineStreamingForConditionalGeneration

    torch.manual_seed(0)
    return MoonshineStreamingForConditionalGeneration(tiny_arch_streaming_config()).eval()


@pytest.fixture(scope="module")
def speech():
    """Synthetic speech of four different lengths."""
    return [espeak.synthesize(text, "en-us+m3") for text in PHRASES]


def test_the_embedder_then_the_windowed_layers_is_the_models_own_masked_forward(tiny_architecture, speech):
    encoder, extractor = tiny_architecture.get_encoder(), bundled_feature_extractor()
    for clip in speech:
        inputs = clip_inputs(encoder, extractor, clip)
        with torch.no_grad():
            output = encoder(inputs["input_values"], attention_mask=inputs["attention_mask"])
            whole = output.last_hidden_state[0, output.attention_mask[0].bool()]  # the model's own masked forward
            split = STREAMING_PATH.clip_states(encoder, inputs)  # moonlora's: embedder, then the windowed layers
        assert whole.shape == split.shape and torch.allclose(whole, split, atol=1e-5)
        frames = len(clip) // 80  # whole 5 ms frames; two stride-2 convs leave about a quarter
        assert frames // 4 <= whole.shape[0] <= frames // 4 + 2


def test_every_clip_gets_the_sliding_windows_even_alone(tiny_architecture, speech):
    """Without a mask transformers' encoder attends to the whole clip; moonlora always passes one."""
    encoder, extractor = tiny_architecture.get_encoder(), bundled_feature_extractor()
    inputs = clip_inputs(encoder, extractor, speech[0])
    with torch.no_grad():
        windowed = STREAMING_PATH.clip_states(encoder, inputs)
        full_attention = encoder(inputs["input_values"]).last_hidden_state[0, : windowed.shape[0]]
    assert (windowed - full_attention).abs().max() > 1e-3


def test_a_clips_states_do_not_depend_on_its_batch(tiny_architecture, speech):
    extractor = bundled_feature_extractor()
    with torch.no_grad():
        together, mask = encode_exact(tiny_architecture, extractor, speech, torch.float32)
        for index, clip in enumerate(speech):
            alone, _ = encode_exact(tiny_architecture, extractor, [clip], torch.float32)
            frames = int(mask[index].sum())
            assert frames == alone.shape[1]
            assert torch.equal(together[index, :frames], alone[0])
            assert not together[index, frames:].any()


def test_the_models_padded_batch_is_not_exact_so_streaming_clips_are_encoded_alone(tiny_architecture, speech):
    """The finding behind `exact_padded_batches=False`: in a padded batch the causal convs count a frame
    valid when any sample of its window is real, so shorter clips gain frames made partly of padding,
    attention sees them, and their states move."""
    encoder, extractor = tiny_architecture.get_encoder(), bundled_feature_extractor()
    with torch.no_grad():
        alone, alone_mask = encode_exact(tiny_architecture, extractor, speech, torch.float32)
        batch = extractor(speech, sampling_rate=16000, return_tensors="pt", padding=True, pad_to_multiple_of=80,
                          return_attention_mask=True)
        padded = encoder(batch["input_values"], attention_mask=batch["attention_mask"])
    alone_frames = alone_mask.sum(1)
    batched_frames = padded.attention_mask.sum(1)
    longest = int(alone_frames.argmax())
    shorter = [i for i in range(len(speech)) if i != longest]
    assert batched_frames[longest] == alone_frames[longest]
    assert all(batched_frames[i] > alone_frames[i] for i in shorter), (batched_frames, alone_frames)
    drift = max(float((padded.last_hidden_state[i, : int(alone_frames[i])] - alone[i, : int(alone_frames[i])])
                      .abs().max()) for i in shorter)
    assert drift > 1e-4, drift


def test_the_decoder_refuses_a_batched_encoder_for_streaming_and_auto_is_per_clip(tiny_architecture, speech):
    from moonlora.model.tokenizer import build_hf_tokenizer
    from moonlora.model import bundled

    decoder = TorchDecoder(tiny_architecture, bundled_feature_extractor(), build_hf_tokenizer(bundled.tokenizer_bin_path()))
    with pytest.raises(ConfigError, match="no exact padded-batch encoder"):
        decoder.check(DecodeConfig(encoder="batched"))
    config = DecodeConfig()
    decoder.check(config)
    states, mask = decoder.encode(speech[:2], config)
    with torch.no_grad():
        expected, expected_mask = encode_exact(tiny_architecture, bundled_feature_extractor(), speech[:2], torch.float32)
    assert torch.equal(states, expected) and torch.equal(mask, expected_mask)
    tokens = decoder.generate((states, mask), [4, 6], config)
    assert [len(row) <= cap for row, cap in zip(tokens, [4, 6])] == [True, True]


def test_the_training_caches_give_the_same_loss_and_are_not_changed_by_the_decoder(tiny_streaming_dir, speech):
    """The streaming decoder adds position embeddings to the encoder states in place: cached states must
    be copied before the model sees them, or every step would shift them again."""
    from moonlora.model.loading import load_model

    loaded = load_model(str(tiny_streaming_dir), device="cpu")
    model, extractor, tokenizer = loaded.model, loaded.feature_extractor, loaded.tokenizer
    model.requires_grad_(False)  # a frozen encoder (and stem), as under a decoder-only adapter
    texts, keys = list(PHRASES), [str(i) for i in range(len(PHRASES))]
    with torch.no_grad():
        plain = batch_loss(model, extractor, tokenizer, speech, texts)
        encoder_cache, stem_cache = EncoderCache(2**30), StemCache()
        cached = [batch_loss(model, extractor, tokenizer, speech, texts, keys, encoder_cache=encoder_cache)
                  for _ in range(2)]
        stems = [batch_loss(model, extractor, tokenizer, speech, texts, keys, cache=stem_cache) for _ in range(2)]
    assert torch.allclose(plain, cached[0], atol=1e-5) and torch.equal(cached[0], cached[1])
    assert torch.allclose(plain, stems[0], atol=1e-5) and torch.equal(stems[0], stems[1])
    expected, _ = pad_states([STREAMING_PATH.clip_states(model.get_encoder(), clip_inputs(model.get_encoder(), extractor, clip))
                              for clip in speech[:1]])
    assert torch.allclose(encoder_cache.saved["0"], expected[0], atol=1e-6)


def test_a_clip_shorter_than_one_frame_is_refused(tiny_architecture):
    with pytest.raises(ValueError, match="shorter than one encoder frame"):
        clip_inputs(tiny_architecture.get_encoder(), bundled_feature_extractor(), np.zeros(40, dtype=np.float32))


@pytest.mark.parametrize("num_beams", [1, 2])
def test_moonloras_decode_is_the_models_own_generate_on_each_clip_alone(tiny_streaming_dir, speech, num_beams):
    """Per-clip states + a batched decoder give each clip the tokens transformers' own `generate` gives it
    alone (with its sample mask, so the sliding windows apply), greedy and beam."""
    from moonlora.model.loading import load_model

    loaded = load_model(str(tiny_streaming_dir), device="cpu")
    decoder, config = loaded.decoder(), DecodeConfig(num_beams=num_beams)
    caps = [5, 7, 6, 4]
    ours = decoder.generate(decoder.encode(speech, config), caps, config)
    encoder = loaded.model.get_encoder()
    for clip, cap, tokens in zip(speech, caps, ours):
        inputs = clip_inputs(encoder, loaded.feature_extractor, clip)
        with torch.no_grad():
            alone = loaded.model.generate(**inputs, max_new_tokens=cap - 1, num_beams=num_beams, do_sample=False)
        assert tokens and tokens[: cap - 1] == [t for t in alone[0].tolist() if t not in (1, 2)][: cap - 1]


def adapted_names(model) -> set[str]:
    return {name.removeprefix("base_model.model.").removesuffix(".lora_A.default")
            for name, _ in model.named_modules() if name.endswith("lora_A.default")}


def test_the_streaming_presets_adapt_what_they_say(tiny_architecture):
    """decoder: the official fine-tuner's default (decoder self-attention q/k/v); encoder: its encoder sites;
    all: every attention and MLP projection (the embedder and output layer stay frozen)."""
    import copy

    from moonlora.configs import LoraSettings
    from moonlora.model.lora import attach_lora

    layers = tiny_architecture.config.decoder_config.num_hidden_layers if hasattr(
        tiny_architecture.config, "decoder_config") else tiny_architecture.config.num_hidden_layers
    found = {preset: adapted_names(attach_lora(copy.deepcopy(tiny_architecture),
                                               LoraSettings(target_modules=(preset,)), seed=0))
             for preset in ("decoder", "encoder", "all")}
    assert found["decoder"] == {f"model.decoder.layers.{i}.self_attn.{p}" for i in range(layers)
                                for p in ("q_proj", "k_proj", "v_proj")}
    assert found["encoder"] == {f"model.encoder.layers.{i}.self_attn.{p}" for i in range(6)
                                for p in ("q_proj", "k_proj", "v_proj")}
    assert found["decoder"] | found["encoder"] < found["all"]
    assert not any("embedder" in name or "proj_out" in name for name in found["all"])
    assert len(found["all"]) == 6 * 6 + layers * 10  # encoder: q/k/v/o + fc1/fc2; decoder adds cross-attention


def test_a_streaming_hub_id_offline_is_one_line_naming_the_offline_model(monkeypatch):
    from huggingface_hub import constants

    from moonlora.errors import ModelSourceError
    from moonlora.model.loading import load_model

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelSourceError) as error:
        load_model("UsefulSensors/moonshine-streaming-tiny", device="cpu")
    message = str(error.value)
    assert "\n" not in message and "UsefulSensors/moonshine-streaming-tiny" in message and "bundled:base-en" in message


def test_a_checkpointed_streaming_encoder_gives_the_same_loss_and_gradients(tiny_streaming_dir, speech):
    from moonlora.configs import LoraSettings
    from moonlora.model.loading import load_model
    from moonlora.model.lora import attach_lora
    from moonlora.train.loop import checkpointed_layers

    loaded = load_model(str(tiny_streaming_dir), device="cpu")
    model = attach_lora(loaded.model, LoraSettings(target_modules=("all",)), seed=0).train()

    def loss_and_gradients(stem_cache):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(7)  # LoRA dropout draws the same masks; a layer rerun in backward restores them
        loss = batch_loss(model, loaded.feature_extractor, loaded.tokenizer, speech, list(PHRASES),
                          [str(i) for i in range(len(speech))], stem_cache)
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain_loss, plain = loss_and_gradients(None)
    with checkpointed_layers(model.get_encoder().layers):
        loss, grads = loss_and_gradients(StemCache())
    assert abs(loss - plain_loss) <= 1e-5 and any(".encoder." in name for name in grads)
    assert all((grads[name] - plain[name]).abs().max() <= 1e-5 for name in plain)


@pytest.mark.parametrize("family", ["moonshine_streaming", "moonshine"])
def test_the_cross_attention_cache_gives_the_same_loss_and_gradients(tiny_streaming_dir, tiny_model_dir, speech,
                                                                      family):
    """While nothing between the encoder and the cross-attention keys/values trains (decoder self-attention
    LoRA), those keys and values are cached per clip: the loss and gradients are those of a full forward."""
    from peft import LoraConfig, get_peft_model

    from moonlora.model.loading import load_model
    from moonlora.train.loop import cross_attention_is_frozen

    loaded = load_model(str(tiny_streaming_dir if family == "moonshine_streaming" else tiny_model_dir), device="cpu")
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.3,
                        target_modules=r".*decoder\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj)")
    model = get_peft_model(loaded.model, config)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.1)  # a non-identity adapter
    model.train()
    keys, cache = [str(i) for i in range(len(speech))], EncoderCache(2**30)
    from moonlora.model.encoder import encoder_path_of
    assert cross_attention_is_frozen(model, encoder_path_of(model))

    def loss_and_gradients(encoder_cache):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(3)  # the same LoRA dropout masks
        loss = batch_loss(model, loaded.feature_extractor, loaded.tokenizer, speech, list(PHRASES),
                          keys if encoder_cache else None, None, encoder_cache)
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full_loss, full = loss_and_gradients(None)
    for _ in range(2):  # filling the cache, then reading it
        loss, grads = loss_and_gradients(cache)
        assert abs(loss - full_loss) <= 1e-6 and grads.keys() == full.keys() and full
        assert all((grads[name] - full[name]).abs().max() <= 1e-6 for name in full)
    assert sum(isinstance(key, tuple) for key in cache.saved) == len(speech)  # the keys/values were cached


def test_no_cross_attention_cache_while_the_cross_attention_trains(tiny_model_dir):
    from moonlora.configs import LoraSettings
    from moonlora.model.encoder import MOONSHINE_PATH
    from moonlora.model.loading import load_model
    from moonlora.model.lora import attach_lora
    from moonlora.train.loop import cross_attention_is_frozen

    model = attach_lora(load_model(str(tiny_model_dir), device="cpu").model,
                        LoraSettings(target_modules=("decoder",)), seed=0)  # Moonshine's decoder preset: cross too
    assert not cross_attention_is_frozen(model, MOONSHINE_PATH)


def test_layers_batched_over_clip_alone_stems_are_exact_with_gradients(tiny_architecture, speech):
    """`states_from_stems_batched`: each clip's stem from the clip alone, the layers as one padded batch;
    the states and an adapted encoder's gradients equal clip by clip, with nothing non-finite from the padding."""
    from moonlora.model.streaming_encoder import batch_pays, states_from_stems_batched

    encoder, extractor = tiny_architecture.get_encoder(), bundled_feature_extractor()
    with torch.no_grad():  # as the stem cache keeps them
        stems = [STREAMING_PATH.stem(encoder, clip_inputs(encoder, extractor, clip)) for clip in speech]
    assert len({mask.shape[1] for _, mask in stems}) == len(speech)  # four different lengths: real padding
    layer = encoder.layers[0].self_attn.q_proj
    results = []
    for batched in (False, True):
        encoder.zero_grad()
        # alone: the model's own masked attention (decoding's); together: training's banded attention
        states = (states_from_stems_batched(encoder, stems) if batched
                  else [layers(encoder, hidden, mask)[0, mask[0].bool()] for hidden, mask in stems])
        sum(s.pow(2).sum() * (index + 1) for index, s in enumerate(states)).backward()
        results.append(([s.detach() for s in states], layer.weight.grad.clone()))
    (alone, alone_grad), (together, together_grad) = results
    assert [s.shape for s in alone] == [s.shape for s in together]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(alone, together))
    assert torch.isfinite(together_grad).all() and torch.allclose(alone_grad, together_grad, rtol=1e-4, atol=1e-4)
    assert float(together_grad.abs().max()) > 0
    assert not batch_pays(stems)  # roger vs. a long sentence: padding well over BATCHED_LAYERS_MAX_PADDING
    assert batch_pays([stems[0], stems[0]]) and not batch_pays(stems[:1])


def test_grouped_batches_train_the_same_loss_through_both_caches(tiny_streaming_dir, speech):
    """Similar lengths make `batch_pays` true: the stem cache's batched layers and the encoder cache's batched
    fill give the per-clip loss."""
    from moonlora.model.loading import load_model

    loaded = load_model(str(tiny_streaming_dir), device="cpu")
    model, extractor, tokenizer = loaded.model, loaded.feature_extractor, loaded.tokenizer
    model.requires_grad_(False)
    clips = [speech[0], speech[0][:-800], speech[0][:-1600]]  # 100 ms apart
    encoder = model.get_encoder()
    assert STREAMING_PATH.batch_pays([STREAMING_PATH.stem(encoder, clip_inputs(encoder, extractor, c)) for c in clips])
    texts, keys = [PHRASES[0]] * 3, ["a", "b", "c"]
    with torch.no_grad():
        plain = batch_loss(model, extractor, tokenizer, clips, texts)
        encoder_cache = EncoderCache(2**30)
        cached = batch_loss(model, extractor, tokenizer, clips, texts, keys, encoder_cache=encoder_cache)
        stems = batch_loss(model, extractor, tokenizer, clips, texts, keys, cache=StemCache())
    assert sorted(k for k in encoder_cache.saved if isinstance(k, str)) == keys
    assert torch.allclose(plain, cached, atol=1e-5) and torch.allclose(plain, stems, atol=1e-5)


@pytest.mark.parametrize("heads,kv_heads,windows", [(2, 2, [[16, 4], [16, 0]]), (4, 2, [[3, 2], [5, 1]])])
def test_banded_attention_is_the_models_windowed_attention_with_gradients(heads, kv_heads, windows):
    """Training's banded attention against the model's own masked attention on a padded batch: states and
    gradients equal, a clip much shorter than the batch (padded queries with no valid key in their window)
    stays finite, the grouped-query case included, and the encoder's attention setting comes back."""
    from transformers import MoonshineStreamingConfig, MoonshineStreamingForConditionalGeneration

    torch.manual_seed(0)
    config = MoonshineStreamingConfig(
        encoder_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=heads,
                            num_key_value_heads=kv_heads, head_dim=8, sliding_windows=windows),
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2)
    encoder = MoonshineStreamingForConditionalGeneration(config).get_encoder().eval()
    with torch.no_grad():  # weights large enough that every frame in a window visibly moves another
        for weight in encoder.layers.parameters():
            if weight.dim() == 2:
                weight.normal_(std=0.3)
    lengths = torch.tensor([70, 53, 9])  # 70 frames: five blocks, the last partly padding
    frame_mask = torch.arange(70)[None, :] < lengths[:, None]
    hidden, direction = torch.randn(3, 70, 16), torch.randn(3, 70, 16)
    results = []
    for banded in (False, True):
        encoder.zero_grad()
        states = layers(encoder, hidden, frame_mask, banded=banded)
        assert encoder.config._attn_implementation == "sdpa"
        (states * direction)[frame_mask].sum().backward()  # (a sum of squares is flat under the final norm)
        results.append((states.detach(), [p.grad.clone() for p in encoder.parameters() if p.grad is not None]))
    (model_states, model_grads), (banded_states, banded_grads) = results
    assert torch.isfinite(banded_states).all()
    assert torch.allclose(model_states[frame_mask], banded_states[frame_mask], atol=1e-5)
    assert len(model_grads) == len(banded_grads) > 0
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(model_grads, banded_grads))
    moved = hidden.clone()
    moved[0, 40] += torch.randn(16)  # moves exactly the frames whose windows (through both layers) reach frame 40
    with torch.no_grad():
        changed = [{frame for frame in range(70) if not torch.allclose(
            layers(encoder, moved, frame_mask, banded=banded)[0, frame], states[0, frame], atol=1e-6)}
            for banded, states in ((False, model_states), (True, banded_states))]
    reach = {40}
    for left, right in windows:  # query q reads key k when 0 <= q - k < left or 0 < k - q < right
        reach = {q for k in reach for q in range(k - max(right - 1, 0), min(k + left, 70))}
    assert changed[0] == changed[1] == reach and min(reach) < 40


def test_the_attention_setting_comes_back_after_an_error():
    from moonlora.model.attention import attention_implementation
    from transformers import MoonshineStreamingConfig

    config = MoonshineStreamingConfig()
    config._attn_implementation = "sdpa"
    with pytest.raises(RuntimeError):
        with attention_implementation(config, "eager"):
            assert config._attn_implementation == "eager" and config.encoder_config._attn_implementation == "sdpa"
            raise RuntimeError
    assert config._attn_implementation == "sdpa"
