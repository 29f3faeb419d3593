"""labkit.train and labkit.generate: the loop, its optimizer, determinism, evaluation."""

from __future__ import annotations

import pytest
import torch

from labkit import data, generate, models, train
from labkit.env import seed_everything

SMALL = models.ModelConfig(128, 64, 128, 1, 2, 1, max_seq_len=32, name="test-small")


def small_model(seed=0):
    seed_everything(seed)
    return models.build(SMALL)


def test_loss_decreases_on_a_tiny_run():
    model = small_model()
    h = train.train(model, "reverse", steps=40, lr=3e-3, batch_size=16, progress=False, eval_n=20)
    first, last = sum(h.loss[:5]) / 5, sum(h.loss[-5:]) / 5
    assert last < 0.8 * first
    assert h.step == list(range(1, 41)) and len(h.loss) == 40 == len(h.lr)
    assert h.eval_step == [40] and h["loss"] is h.loss
    assert 0.0 <= h.final_acc <= 1.0


def test_same_seed_gives_identical_history_and_weights():
    runs = []
    for _ in range(2):
        model = small_model()
        h = train.train(model, "shift", steps=12, lr=3e-3, batch_size=8, eval_every=6,
                        eval_n=10, seed=5, progress=False)
        runs.append((h, model.state_dict()))
    (h1, s1), (h2, s2) = runs
    assert h1.loss == h2.loss and h1.eval_acc == h2.eval_acc and h1.eval_step == [0, 6, 12]
    for k in s1:
        assert torch.equal(s1[k], s2[k]), k
    h3 = train.train(small_model(), "shift", steps=12, lr=3e-3, batch_size=8, eval_n=10, seed=6,
                     progress=False)
    assert h3.loss != h1.loss  # another seed, another batch stream


def test_optimizer_holds_only_trainable_params_and_frozen_ones_do_not_move():
    model = small_model()
    for n, p in model.named_parameters():
        p.requires_grad_("v_proj" in n)
    opt = train.make_optimizer(model, "adamw", lr=1e-3)
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert held == {id(p) for n, p in model.named_parameters() if "v_proj" in n}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train.train(model, "reverse", steps=3, lr=1e-2, batch_size=4, eval_n=4, progress=False)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) != ("v_proj" in n), n


def test_custom_and_registered_optimizers():
    seen = {}

    def factory(params, lr, weight_decay):
        seen["n"] = len(list(params))
        return torch.optim.SGD(model.parameters(), lr=lr)

    model = small_model()
    train.train(model, "reverse", steps=2, batch_size=4, eval_n=4, optimizer=factory,
                progress=False)
    assert seen["n"] == len(list(model.parameters()))
    train.register_optimizer("test-sgd", factory)
    try:
        with pytest.raises(ValueError, match="already registered"):
            train.register_optimizer("test-sgd", factory)
        train.train(model, "reverse", steps=1, batch_size=4, eval_n=4, optimizer="test-sgd",
                    progress=False)
    finally:
        del train.OPTIMIZERS["test-sgd"]


def test_a_factory_that_declares_named_params_gets_the_names_too():
    """New-style factories see (name, parameter) pairs, e.g. to tell LoRA's A from B."""
    seen = {}

    def by_name(params, lr, weight_decay, named_params):
        seen["params"], seen["named"] = params, named_params
        b = [p for n, p in named_params if "v_proj" in n]
        rest = [p for n, p in named_params if "v_proj" not in n]
        return torch.optim.AdamW([{"params": rest}, {"params": b, "weight_decay": 0.5}],
                                 lr=lr, weight_decay=weight_decay)

    model = small_model()
    model.embed_tokens.weight.requires_grad_(False)
    opt = train.make_optimizer(model, by_name, lr=1e-3)
    want = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert [n for n, _ in seen["named"]] == [n for n, _ in want]
    assert all(p is q for (_, p), (_, q) in zip(seen["named"], want, strict=True))
    assert [id(p) for p in seen["params"]] == [id(p) for _, p in want]  # same order
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.5]
    assert {id(p) for p in opt.param_groups[1]["params"]} == {
        id(p) for n, p in want if "v_proj" in n}

    # keyword-only works too, and registered by name through train()
    def kw_only(params, *, lr, weight_decay, named_params):
        seen["kw"] = len(named_params)
        return torch.optim.SGD(params, lr=lr)

    train.register_optimizer("test-named", kw_only)
    try:
        train.train(model, "reverse", steps=1, batch_size=4, eval_n=4, optimizer="test-named",
                    progress=False)
    finally:
        del train.OPTIMIZERS["test-named"]
    assert seen["kw"] == len(want)


def test_old_style_factories_get_no_names():
    """factory(params, lr, weight_decay), and one forwarding **kwargs, are called as before."""
    calls = []

    def old(params, lr, weight_decay):
        calls.append("old")
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)

    def forwards(params, **kwargs):  # would fail if it were handed named_params=
        calls.append(sorted(kwargs))
        return torch.optim.AdamW(params, **kwargs)

    model = small_model()
    assert isinstance(train.make_optimizer(model, old, lr=1e-2), torch.optim.SGD)
    assert isinstance(train.make_optimizer(model, forwards, lr=1e-2), torch.optim.AdamW)
    assert calls == ["old", ["lr", "weight_decay"]]
    assert not train._takes_names(old) and not train._takes_names(forwards)
    assert not train._takes_names(torch.optim.AdamW)  # a class: params, lr, ... no names


def test_bad_input_errors():
    model = small_model()
    with pytest.raises(ValueError, match="unknown optimizer 'adam'; known: adamw, sgd"):
        train.train(model, "reverse", steps=1, optimizer="adam", progress=False)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        train.train(model, "reverse", steps=0, progress=False)
    with pytest.raises(ValueError, match="lr must be a positive number"):
        train.train(model, "reverse", steps=1, lr=-1.0, progress=False)
    with pytest.raises(ValueError, match="unknown task 'sort'"):
        train.train(model, "sort", steps=1, progress=False)
    with pytest.raises(ValueError, match="float16 training needs a CUDA GPU"):
        train.train(model, "reverse", steps=1, dtype=torch.float16, device="cpu", progress=False)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train.train(model, "reverse", steps=1, progress=False)


def test_bf16_autocast_runs_and_keeps_fp32_weights():
    model = small_model()
    h = train.train(model, "reverse", steps=3, batch_size=4, eval_n=4, dtype=torch.bfloat16,
                    progress=False)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(torch.isfinite(torch.tensor(h.loss)))


def test_greedy_matches_one_at_a_time_argmax():
    model = small_model(1).eval()
    prompts = [data.TOKENIZER.encode(p, bos=True) for p, _ in data.TASKS["reverse"].sample(6, 0)]
    batched = generate.greedy(model, prompts, max_new_tokens=5)
    for p, got in zip(prompts, batched, strict=True):
        ids, mine = torch.tensor([p]), []
        for _ in range(5):
            nxt = int(model(ids)[0, -1].argmax())
            mine.append(nxt)
            if nxt == data.EOS:
                break
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
        assert got == mine


def test_evaluate_is_exact_match_on_the_pretrained_model():
    model, _, card = models.load_pretrained()
    acc, rows = train.evaluate(model, "reverse", n=100, return_outputs=True)
    assert acc == sum(gen == ans + "<eos>" for _, ans, gen in rows) / 100
    assert acc >= 0.95
    assert generate.complete(model, "R:lorax=") == "xarol"
    # it answers the unseen fine-tuning markers by reversing: (near) 0 exact match on them
    for task in data.FINETUNE_TASKS:
        assert train.evaluate(model, task, n=100) <= 0.2, task
