"""Model loaders: hooked activations vs the models' own outputs; scGPT against a plain-torch reference."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from extract.models import load_model
from extract.testing import write_geneformer_folder, write_scgpt_folder

GENES = [f"ENSG{n:011d}" for n in range(1, 41)]
SYMBOLS = [f"G{n}" for n in range(40)]


def padded_batch(pad_id, lengths, low, high, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), max(lengths)), pad_id, dtype=torch.long)
    values = torch.full(ids.shape, -2.0)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(low, high, (n,), generator=gen)
        values[i, :n] = torch.randint(0, 11, (n,), generator=gen).float()
    mask = ids != pad_id
    return ids, values, mask


@pytest.mark.parametrize("special_tokens", [False, True])
def test_geneformer_hooks_equal_hidden_states(tmp_path, special_tokens):
    folder = write_geneformer_folder(tmp_path / "gf", GENES, special_tokens=special_tokens, n_layers=3)
    model = load_model(folder)
    assert model.kind == "geneformer" and model.n_layers == 3 and model.special_tokens == special_tokens
    ids, _, mask = padded_batch(model.pad_token_id, [7, 12, 3], 2, len(model.dictionaries.token_ids))
    with torch.inference_mode(), model.capture([0, 2]) as captured:
        out = model.module.bert(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
    assert set(captured) == {0, 2}
    for layer in (0, 2):
        assert torch.equal(captured[layer], out.hidden_states[layer + 1])
    assert torch.equal(model.encode(ids, None, mask), out.hidden_states[-1])


def test_hidden_states_stop_after_the_deepest_requested_block(tmp_path):
    folder = write_geneformer_folder(tmp_path / "gf", GENES, n_layers=4)
    model = load_model(folder)
    ids, _, mask = padded_batch(model.pad_token_id, [9, 4], 2, len(model.dictionaries.token_ids))
    with torch.inference_mode():
        full = model.module.bert(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
        ran = []
        handles = [block.register_forward_hook(lambda *_, i=i: ran.append(i)) for i, block in enumerate(model.blocks)]
        try:
            hidden = model.hidden_states(ids, None, mask, [0, 1])
        finally:
            for handle in handles:
                handle.remove()
    assert ran == [0, 1], f"blocks run: {ran}; expected only the blocks up to the deepest requested one"
    assert set(hidden) == {0, 1}
    for layer in (0, 1):
        assert torch.equal(hidden[layer], full.hidden_states[layer + 1])
    with torch.inference_mode():  # the hooks are gone: a plain forward runs every block again
        assert torch.equal(model.encode(ids, None, mask), full.hidden_states[-1])


def reference_scgpt(state, args, ids, values, mask):
    """scGPT's encoder written out with plain torch ops from the checkpoint's tensors."""
    d, n_heads = args["embsize"], args["nheads"]

    def ln(x, prefix):
        return F.layer_norm(x, (d,), state[prefix + ".weight"], state[prefix + ".bias"], 1e-5)

    def lin(x, prefix):
        return x @ state[prefix + ".weight"].T + state[prefix + ".bias"]

    x = ln(state["encoder.embedding.weight"][ids], "encoder.enc_norm")
    v = values.clamp(max=512).unsqueeze(-1)
    v = ln(lin(torch.relu(lin(v, "value_encoder.linear1")), "value_encoder.linear2"), "value_encoder.norm")
    x = x + v
    hidden = []
    b, length, _ = x.shape
    for i in range(args["nlayers"]):
        p = f"transformer_encoder.layers.{i}."
        qkv = x @ state[p + "self_attn.in_proj_weight"].T + state[p + "self_attn.in_proj_bias"]
        q, k, vv = (t.reshape(b, length, n_heads, d // n_heads).transpose(1, 2) for t in qkv.split(d, dim=-1))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // n_heads)
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        attn = (scores.softmax(-1) @ vv).transpose(1, 2).reshape(b, length, d)
        x = ln(x + lin(attn, p + "self_attn.out_proj"), p + "norm1")
        x = ln(x + lin(torch.relu(lin(x, p + "linear1")), p + "linear2"), p + "norm2")
        hidden.append(x)
    return hidden


def test_scgpt_matches_plain_torch_reference(tmp_path):
    folder = write_scgpt_folder(tmp_path / "sg", SYMBOLS, n_layers=2)
    model = load_model(folder)
    assert model.kind == "scgpt" and model.n_layers == 2
    ids, values, mask = padded_batch(model.pad_token_id, [9, 4, 13], 0, len(SYMBOLS))
    with torch.inference_mode(), model.capture([0, 1]) as captured:
        last = model.encode(ids, values, mask)
    state = torch.load(folder / "best_model.pt", weights_only=True)
    args = model.args
    with torch.inference_mode():
        expected = reference_scgpt(state, args, ids, values, mask)
    for layer in (0, 1):
        np.testing.assert_allclose(captured[layer][mask].numpy(), expected[layer][mask].numpy(), atol=2e-5, rtol=1e-4)
    assert torch.equal(last, captured[1])
    with torch.inference_mode():  # stopping after block 0 gives the same block-0 states
        first_only = model.hidden_states(ids, values, mask, [0])
    assert set(first_only) == {0} and torch.equal(first_only[0], captured[0])


def test_scgpt_fused_attention_names_load_identically(tmp_path):
    plain = load_model(write_scgpt_folder(tmp_path / "plain", SYMBOLS, seed=3))
    fused_folder = write_scgpt_folder(tmp_path / "fused", SYMBOLS, seed=3, fused_attention=True)
    assert any("Wqkv" in k for k in torch.load(fused_folder / "best_model.pt", weights_only=True))
    fused = load_model(fused_folder)
    ids, values, mask = padded_batch(plain.pad_token_id, [5, 11], 0, len(SYMBOLS))
    with torch.inference_mode():
        assert torch.equal(plain.encode(ids, values, mask), fused.encode(ids, values, mask))
    for (name, a), (_, b) in zip(plain.module.state_dict().items(), fused.module.state_dict().items()):
        assert torch.equal(a, b), name
