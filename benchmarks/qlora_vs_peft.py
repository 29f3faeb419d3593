"""labkit QLoRA against PEFT + bitsandbytes on the same model, targets, rank and data (CPU).

Part 1, speed and bytes, with the contenders' repetitions interleaved (A B C D, D C B A, ...)
so that load from other processes hits all alike:

* training step time (forward, loss, backward, AdamW step) of labkit's QLoRA, with the
  bitsandbytes back end and with labkit's reference back end, over PEFT + bitsandbytes
  (goal <= 1.0), and over plain LoRA on the float32 base (what 4 bits cost on a CPU);
* base-weight bytes (4-bit codes + quantization state + the layers kept in float32), which
  must equal PEFT's;
* losses after the timed steps: all start from the same adapter values, so labkit and
  PEFT must agree (same maths), a check that both did the same work.

Part 2, "QLoRA matches LoRA" (``--parity``, part of the default run): fine-tune the shipped
pretrained model on ``shift`` with LoRA on the float32 base and with QLoRA (NF4 + double
quantization), same rank, targets, steps and data, for 3 seeds; exact-match accuracy,
mean and spread.

    python benchmarks/qlora_vs_peft.py             # both parts (several minutes on 2 cores)
    python benchmarks/qlora_vs_peft.py --no-parity # part 1 only (about a minute)
    python benchmarks/qlora_vs_peft.py --quick     # smoke test, seconds; numbers meaningless
"""

from __future__ import annotations

import argparse
import copy
import statistics

import _bench  # noqa: F401  (offline, labkit importable; must precede labkit)
import torch
from _bench import TARGETS, interleave, ratio

from labkit import _deps, models, qlora, train
from labkit import lora as L
from labkit.data import get_task
from labkit.env import seed_everything


def contenders(base, r: int) -> dict:
    """The four models, all starting from PEFT's adapter initialisation."""
    from peft import LoraConfig, get_peft_model

    theirs = copy.deepcopy(base)
    qlora.quantize_model(theirs, TARGETS, backend="bnb")
    theirs.is_loaded_in_4bit = True  # as transformers marks it: PEFT uses its bnb layers
    pm = get_peft_model(theirs, LoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS))
    qlora.disable_cpu_inference_repack(pm)  # the same switch on their side (see labkit.qlora)
    init = {k.removeprefix("base_model.model."): v
            for k, v in pm.state_dict().items() if ".lora_" in k}
    out = {"peft+bnb": pm}
    for name, backend in (("labkit+bnb", "bnb"), ("labkit+ref", "labkit")):
        m = copy.deepcopy(base)
        qlora.prepare_qlora(m, TARGETS, r=r, alpha=2 * r, backend=backend)
        out[name] = m
    lora32 = copy.deepcopy(base)
    L.add_lora(lora32, TARGETS, r=r, alpha=2 * r)
    out["lora fp32"] = lora32
    with torch.no_grad():
        for name in ("labkit+bnb", "labkit+ref", "lora fp32"):
            for k, p in L.get_adapter_params(out[name]).items():
                p.copy_(init[k])
    return out


def speed(base, r: int, batch: int, reps: int, warm: int) -> bool:
    task = get_task("shift")
    ids, labels = task.batch(batch, rng=__import__("random").Random(0))
    models_ = contenders(base, r)
    losses: dict[str, float] = {}

    def stepper(name, model):
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

        def step():
            loss = train.lm_loss(model(ids), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses[name] = loss.item()
        return step

    fns = {k: stepper(k, m) for k, m in models_.items()}
    interleave(fns, warm)
    wall, cpu = interleave(fns, reps)
    med = {k: statistics.median(v) * 1e3 for k, v in wall.items()}

    cfg = base.config
    print(f"model: hidden {cfg.hidden_size}, intermediate {cfg.intermediate_size}, "
          f"{cfg.n_layers} layers, {sum(p.numel() for p in base.parameters()):,d} params; "
          f"QLoRA NF4 + double quant, r={r}, alpha={2 * r} on {', '.join(TARGETS)}; batch "
          f"{batch} x {ids.shape[1]} tokens; {torch.get_num_threads()} threads; {reps} "
          "interleaved reps")
    print(f"{'train step':<34} {'ms':>8} {'ratio':>7} {'cpu ratio':>9}  goal")
    rows = [("labkit QLoRA (bnb) / PEFT+bnb", "labkit+bnb", "peft+bnb", "<= 1.00"),
            ("labkit QLoRA (ref) / PEFT+bnb", "labkit+ref", "peft+bnb", "(reference)"),
            ("labkit QLoRA (bnb) / LoRA fp32", "labkit+bnb", "lora fp32", "(4-bit cost)")]
    for label, a, b, goal in rows:
        print(f"{label:<34} {med[a]:>8.2f} {ratio(a, b, wall):>7.3f} "
              f"{ratio(a, b, cpu):>9.3f}  {goal}")
    print(f"{'PEFT+bnb / LoRA fp32':<34} {med['peft+bnb']:>8.2f} "
          f"{ratio('peft+bnb', 'lora fp32', wall):>7.3f} "
          f"{ratio('peft+bnb', 'lora fp32', cpu):>9.3f}")
    print("(ms: median wall time; ratios: median of per-round ratios, wall and process CPU)")

    nbytes = {k: qlora.base_weight_bytes(m) for k, m in models_.items()}
    equal = nbytes["labkit+bnb"] == nbytes["labkit+ref"] == nbytes["peft+bnb"]
    print(f"base-weight bytes: labkit {nbytes['labkit+bnb']:,d} (reference back end "
          f"{nbytes['labkit+ref']:,d}), PEFT+bnb {nbytes['peft+bnb']:,d}, float32 base "
          f"{nbytes['lora fp32']:,d}; base-weight bytes equal: {equal}")
    counts = {k: L.model_params(m) for k, m in models_.items() if k != "peft+bnb"}
    p_train, p_total = models_["peft+bnb"].get_nb_trainable_parameters()
    same_counts = all((c.trainable, c.total) == (p_train, p_total) for c in counts.values())
    print(f"trainable params: {p_train:,d} of {p_total:,d}; equal to PEFT's: {same_counts}")
    gap = abs(losses["labkit+bnb"] - losses["peft+bnb"])
    finite = all(map(lambda v: v == v and abs(v) != float("inf"), losses.values()))
    print(f"loss after {warm + reps} steps: "
          + ", ".join(f"{k} {v:.5f}" for k, v in losses.items())
          + f"; labkit vs PEFT |diff| {gap:.1e}")
    return equal and same_counts and finite


def parity(base, seeds: int, steps: int, r: int, lr: float, eval_n: int, batch: int) -> None:
    accs: dict[str, list[float]] = {"LoRA (fp32 base)": [], "QLoRA (NF4 base)": []}
    for seed in range(seeds):
        for name in accs:
            seed_everything(seed)
            m = copy.deepcopy(base)
            if name.startswith("QLoRA"):
                qlora.prepare_qlora(m, TARGETS, r=r, alpha=2 * r)  # NF4 + double quant
            else:
                L.add_lora(m, TARGETS, r=r, alpha=2 * r)
            train.train(m, "shift", steps=steps, lr=lr, batch_size=batch, seed=seed,
                        eval_n=4, progress=False)
            accs[name].append(train.evaluate(m, "shift", n=eval_n))
    print(f"\nQLoRA vs LoRA on 'shift' from the pretrained model: r={r}, all 7 linear "
          f"targets, {steps} steps of {batch}, lr {lr}, {seeds} seeds, exact match on "
          f"{eval_n} words")
    for name, a in accs.items():
        sd = statistics.stdev(a) if len(a) > 1 else 0.0
        print(f"{name:<18} " + "  ".join(f"{x:6.1%}" for x in a)
              + f"   mean {statistics.mean(a):6.1%}  sd {sd:5.1%}")
    diffs = [q - f for q, f in zip(accs["QLoRA (NF4 base)"], accs["LoRA (fp32 base)"],
                                   strict=True)]
    sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    print("QLoRA - LoRA per seed: " + "  ".join(f"{d:+6.1%}" for d in diffs)
          + f"   mean {statistics.mean(diffs):+6.1%}  sd {sd:5.1%}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, few reps (smoke test)")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-parity", action="store_true", help="skip the 3-seed accuracy part")
    ap.add_argument("--no-speed", action="store_true", help="skip the timing part")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=120, help="fine-tuning steps (parity run)")
    ap.add_argument("--parity-r", type=int, default=16, help="rank in the parity run")
    ap.add_argument("--lr", type=float, default=3e-3, help="learning rate (parity run)")
    args = ap.parse_args(argv)
    seed_everything(0, threads=args.threads)
    _deps.import_bnb()  # peft imports bitsandbytes; keep its import log quiet

    pretrained = models.load_pretrained().model
    if args.quick:
        base, batch, reps, warm = pretrained, 4, args.reps or 2, 1
    else:  # a wider model, so that the matmuls, not Python, dominate the step
        cfg = pretrained.config.replace(hidden_size=256, intermediate_size=768, n_layers=4,
                                        n_heads=8, n_kv_heads=4, name="bench")
        base, batch, reps, warm = models.build(cfg), 32, args.reps or 20, 3
    ok = True if args.no_speed else speed(base, args.r, batch, reps, warm)
    if not args.no_parity:  # the lesson's settings (lessons/05_qlora.ipynb)
        if args.quick:
            parity(pretrained, seeds=1, steps=2, r=args.parity_r, lr=args.lr, eval_n=4, batch=4)
        else:
            parity(pretrained, args.seeds, args.steps, args.parity_r, lr=args.lr, eval_n=200,
                   batch=32)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
