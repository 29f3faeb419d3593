"""labkit LoRA against PEFT on the same model, targets, rank and data, in one process.

Measures, with the repetitions of the contenders interleaved (A B B A ...) so that load
from other processes hits both alike:

* training step time (forward, loss, backward, AdamW step): labkit over PEFT, goal <= 1.0;
* inference of the merged model over the base model, goal <= 1.02, both for labkit's
  merged LoRA layers (wrappers kept) and after ``unload_lora`` (plain ``nn.Linear`` again);
* trainable-parameter counts, which must equal PEFT's.

Both sides start from the same adapter values (PEFT's initialisation copied into labkit),
so their losses after the timed steps must agree too: a check that both did the same work.

    python benchmarks/lora_vs_peft.py            # the full run (about a minute)
    python benchmarks/lora_vs_peft.py --quick    # smoke test, seconds; timings meaningless
"""

from __future__ import annotations

import argparse
import copy
import statistics

import _bench  # noqa: F401  (offline, labkit importable; must precede labkit)
import torch
import torch.nn.functional as F
from _bench import TARGETS, interleave, ratio

from labkit import _deps
from labkit import lora as L
from labkit.env import seed_everything


def build(quick: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    if quick:
        cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
        batch, seq = 2, 16
    else:
        cfg = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=688,
                          num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4)
        batch, seq = 8, 64
    return LlamaForCausalLM(cfg).eval(), cfg, batch, seq


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, few reps (smoke test)")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions per contender")
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = ap.parse_args(argv)
    reps = args.reps or (3 if args.quick else 40)
    warm = 1 if args.quick else 5

    seed_everything(0, threads=args.threads)
    _deps.import_bnb()  # peft imports bitsandbytes; keep its import log quiet
    from peft import LoraConfig, get_peft_model

    base, cfg, batch, seq = build(args.quick)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq + 1))
    x, y = ids[:, :-1], ids[:, 1:]

    pm = get_peft_model(copy.deepcopy(base), LoraConfig(
        r=args.r, lora_alpha=2 * args.r, target_modules=TARGETS, lora_dropout=0.0))
    mine = copy.deepcopy(base)
    rep = L.add_lora(mine, TARGETS, r=args.r, alpha=2 * args.r)
    theirs = {k.removeprefix("base_model.model."): v for k, v in pm.state_dict().items()}
    with torch.no_grad():  # same starting adapters on both sides
        for k, p in L.get_adapter_params(mine).items():
            p.copy_(theirs[k])
    p_train, p_total = pm.get_nb_trainable_parameters()
    equal = (rep.params.trainable, rep.params.total) == (p_train, p_total)

    losses = {}

    def stepper(name, model):
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

        def step():
            logits = model(input_ids=x).logits
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses[name] = loss.item()
        return step

    train = {"labkit": stepper("labkit", mine), "peft": stepper("peft", pm)}
    interleave(train, warm)
    t_train, c_train = interleave(train, reps)
    loss_gap = abs(losses["labkit"] - losses["peft"])

    # Inference: base model vs labkit merged (wrappers kept) vs labkit unloaded.
    mine.eval()
    merged = copy.deepcopy(mine)
    L.merge_lora(merged)
    unloaded = L.unload_lora(copy.deepcopy(mine), merge=True)
    with torch.no_grad():
        want = mine(input_ids=x).logits
        gap = max((m(input_ids=x).logits - want).abs().max().item() for m in (merged, unloaded))

    def infer(model):
        def run():
            with torch.no_grad():
                model(input_ids=x)
        return run

    inf = {"base": infer(base), "merged": infer(merged), "unloaded": infer(unloaded)}
    interleave(inf, warm)
    t_inf, c_inf = interleave(inf, reps)

    times, cpu = {**t_train, **t_inf}, {**c_train, **c_inf}
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}

    print(f"LlamaForCausalLM hidden={cfg.hidden_size} layers={cfg.num_hidden_layers} "
          f"vocab={cfg.vocab_size}; LoRA r={args.r} alpha={2 * args.r} on {', '.join(TARGETS)}; "
          f"batch {batch} x {seq} tokens; {torch.get_num_threads()} threads; "
          f"{reps} interleaved reps (medians)")
    rows = [("train step: labkit / PEFT", "labkit", "peft", "<= 1.00"),
            ("inference: merged / base", "merged", "base", "<= 1.02"),
            ("inference: unloaded / base", "unloaded", "base", "<= 1.02")]
    print(f"{'measure':<28} {'ours ms':>9} {'ref ms':>9} {'ratio':>7} {'cpu ratio':>9}  goal")
    for name, a, b, goal in rows:
        print(f"{name:<28} {med[a]:>9.2f} {med[b]:>9.2f} {ratio(a, b, times):>7.3f} "
              f"{ratio(a, b, cpu):>9.3f}  {goal}")
    print("(ms: median wall time; ratios: median of per-round ratios, wall and process CPU)")
    print(f"trainable params: labkit {rep.params.trainable:,d} / {rep.params.total:,d}, "
          f"PEFT {p_train:,d} / {p_total:,d}; counts equal: {equal}")
    print(f"loss after {warm + reps} steps: labkit {losses['labkit']:.6f}, "
          f"PEFT {losses['peft']:.6f} (|diff| {loss_gap:.1e}); "
          f"merged vs unmerged logits max |diff| {gap:.1e}")
    return 0 if equal else 1


if __name__ == "__main__":
    raise SystemExit(main())
