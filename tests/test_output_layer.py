"""The training forward's blocked vocabulary projection and the copy-free decoder caches: same bits, fewer copies."""

from __future__ import annotations

import pytest
import torch
from conftest import lora_loaded_non_identity

from moonlora.model.encoder import encoder_path_of
from moonlora.train import output_layer
from moonlora.train.loop import HeldLayer, held_cache, label_ids, teacher_forced_loss
from moonlora.train.output_layer import blocked_output_applies, output_logits


@pytest.mark.parametrize("positions", [1, 7, 146])
def test_blocked_logits_and_input_gradient_are_the_plain_products_bit_for_bit(positions):
    torch.manual_seed(0)
    layer = torch.nn.Linear(320, 5000, bias=False).requires_grad_(False)  # 5000 = 4 blocks of 1024 and a rest
    hidden = torch.randn(positions, 320, requires_grad=True)
    plain = layer(hidden)
    upstream = torch.randn_like(plain)
    plain.backward(upstream)
    plain_gradient, hidden.grad = hidden.grad.clone(), None
    blocked = output_logits(layer, hidden, block=1024)
    assert type(blocked.grad_fn).__name__ == "_BlockedLinearBackward"
    blocked.backward(upstream)
    assert torch.equal(blocked, plain) and torch.equal(hidden.grad, plain_gradient)


def test_anything_but_a_frozen_bias_free_fp32_cpu_layer_goes_through_the_module():
    hidden = torch.randn(4, 8)
    frozen = torch.nn.Linear(8, 32, bias=False).requires_grad_(False)
    assert blocked_output_applies(frozen, hidden)
    trained = torch.nn.Linear(8, 32, bias=False)
    with_bias = torch.nn.Linear(8, 32).requires_grad_(False)
    for layer, states in ((trained, hidden), (with_bias, hidden), (frozen, hidden[None]), (frozen, hidden.double())):
        assert not blocked_output_applies(layer, states)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not blocked_output_applies(frozen, hidden)
        assert output_logits(frozen, hidden).dtype == torch.bfloat16  # the module ran, under autocast
    assert output_logits(trained, hidden).grad_fn is not None and \
        type(output_logits(trained, hidden).grad_fn).__name__ != "_BlockedLinearBackward"


def test_the_streaming_training_loss_uses_the_blocked_head_and_gives_the_same_loss_and_gradients(tiny_streaming_dir,
                                                                                                 monkeypatch):
    loaded, model = lora_loaded_non_identity(tiny_streaming_dir)
    states = torch.randn(2, 11, model.config.encoder_config.hidden_size)
    mask = torch.ones(2, 11, dtype=torch.long)
    labels = label_ids(loaded.tokenizer, ["cleared to land", "hold short"], model.config.eos_token_id)
    calls = []
    blocked_apply = output_layer._BlockedLinear.apply
    monkeypatch.setattr(output_layer._BlockedLinear, "apply", lambda *a: calls.append(1) or blocked_apply(*a))
    monkeypatch.setattr(output_layer, "VOCABULARY_BLOCK", 1000)  # 32768 classes: 33 blocks, the last one short

    def loss_and_gradients():
        model.zero_grad()
        encoded = encoder_path_of(model).output_class(last_hidden_state=states.clone(), attention_mask=mask)
        loss = teacher_forced_loss(model, encoded, mask, labels)
        loss.backward()
        return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    blocked_loss, blocked_gradients = loss_and_gradients()
    assert calls == [1]
    monkeypatch.setattr(output_layer, "blocked_output_applies", lambda *a: False)
    plain_loss, plain_gradients = loss_and_gradients()
    assert calls == [1]
    assert torch.equal(blocked_loss, plain_loss)
    assert blocked_gradients.keys() == plain_gradients.keys()
    assert all(torch.equal(blocked_gradients[n], plain_gradients[n]) for n in plain_gradients)


def test_a_held_layer_keeps_its_first_keys_and_values_and_appends_later_ones():
    keys, values = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 5, 8)
    layer = HeldLayer()
    assert layer.update(keys, values) == (keys, values)
    assert layer.keys is keys and layer.values is values  # no copy
    more = torch.randn(2, 4, 3, 8)
    grown_keys, grown_values = layer.update(more, more)
    assert torch.equal(grown_keys, torch.cat([keys, more], dim=-2)) and grown_values.shape[-2] == 8
    cache = held_cache()
    cache.update(keys, values, 1)
    assert [type(layer) for layer in cache.layers] == [HeldLayer, HeldLayer] and cache.layers[1].keys is keys
    assert cache.get_seq_length(1) == 5
