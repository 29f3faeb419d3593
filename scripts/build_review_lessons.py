"""Write lessons 07 (practice) and 08 (review) from their cell sources, with stable cell ids.

Usage:
    python scripts/build_review_lessons.py          # writes lessons/07_*.ipynb, 08_*.ipynb
    python scripts/run_notebook.py lessons/07_practice.ipynb lessons/08_review.ipynb

The notebooks are written unexecuted; the committed executor then runs them and stores the
outputs. Edit the text here (not in JupyterLab) so that a rebuild keeps the ids and the
exercise metadata.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from labkit.classroom import exercise_metadata  # noqa: E402

KERNEL = {
    "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                   "name": "python3"},
    "language_info": {"name": "python"},
}


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str, exercise: str | None = None):
    cell = new_code_cell(text.strip("\n"))
    if exercise is not None:
        cell.metadata.update(exercise_metadata(exercise))
    return cell


def write(cells, name: str, prefix: str) -> Path:
    nb = new_notebook(cells=cells, metadata=KERNEL)
    for i, cell in enumerate(nb.cells):
        cell.id = f"{prefix}-{i:02d}"
    nbformat.validate(nb)
    path = ROOT / "lessons" / name
    nbformat.write(nb, path)
    return path


# --------------------------------------------------------------------------- lesson 07

L07 = [
    md("""
# 07 · Practice: worked problems, then the real numbers

Five problems in the style of the course's cheat sheet, one per idea: what LoRA is for, what
QLoRA is, the size of a compressed model with adapters, a bug in that arithmetic, and which
approach fits a small machine. For each one:

1. **Try it** in the widget: pick or type an answer and press **Check**; **Hint** nudges you,
   **Show solution** walks through it.
2. **Then run the worked solution** below it: hint, steps, final answer, a one-line quick
   check, and the mistakes people usually make.

The second half goes **beyond the cheat sheet**. Its size arithmetic simplifies twice, and
you will redo it with labkit's real accounting and see how far off the simple answer is.
"""),
    code('''
from labkit import quiz

bank = quiz.load_bank()


def worked(item_id):
    """Print a problem's hint, steps, answer, quick check and common mistakes."""
    item = bank.by_id[item_id]
    print(f"Hint: {item.hint}")
    print("Steps:")
    for i, step in enumerate(item.solution, start=1):
        print(f"  {i}. {step}")
    print(f"Answer: {item.answer}")
    print(f"Quick check: {item.quick_check}")
    print("Common mistakes:")
    for mistake in item.mistakes:
        print(f"  - {mistake}")
'''),
    md("## Problem 1 · What is LoRA for? (easy)"),
    code('quiz.show(ids=["lb-goal"])'),
    md("Tried it? Here is the worked solution."),
    code('worked("lb-goal")'),
    md("""
## Problem 2 · What is QLoRA? (easy)

A recall card: say the answer to yourself (or write it down) before you reveal it.
"""),
    code('quiz.show(ids=["ql-name"])'),
    code('worked("ql-name")'),
    md("""
## Problem 3 · Model plus adapters, compressed: what does it print? (hard)

Read the code, decide what it prints, and type exactly that into the box.
"""),
    code('quiz.show(ids=["ql-memory-code"])'),
    md("The quiz's answer is checked by running the code. Run it here too:"),
    code('exec(bank.by_id["ql-memory-code"].code)'),
    code('worked("ql-memory-code")'),
    md("""
## Problem 4 · Find the bug (medium)

The classic slip in size arithmetic: a factor meant for a sum is written after one of its
terms. Python's `*` binds tighter than `+`, so `a + b * f` is `a + (b * f)`.
"""),
    code('quiz.show(ids=["qz-both-bug"])'),
    md("Run the buggy version and the fixed one side by side:"),
    code('''
item = bank.by_id["qz-both-bug"]
print("buggy prints:", end=" ")
exec(item.code)
print("fixed prints:", end=" ")
exec(item.fixed)
'''),
    code('worked("qz-both-bug")'),
    md("## Problem 5 · A big model, a small machine: which approach? (scenario, easy)"),
    code('quiz.show(ids=["ql-scenario-laptop"])'),
    code('worked("ql-scenario-laptop")'),
    md("""
## Beyond the cheat sheet: the real size of a QLoRA model

Problem 3 worked with round numbers: a 7B model is 14 GB in 16-bit, its adapters 0.08 GB, and
"4-bit" is a factor of 0.25. That arithmetic simplifies in three places:

* **4 bits are not exactly 25 % of 16.** Each block of 64 weights also stores its absmax
  scale (lesson 04). Plain NF4 costs 4 + 32/64 = 4.5 bits per weight; with double
  quantization (the scales themselves stored in 8 bits) about 4.127.
* **QLoRA does not quantize the adapters.** They are the part that trains, so they stay in
  16 (or 32) bits (lesson 05). Compressing "model plus adapters" is the cheat sheet's slip.
* **Not every weight is 4-bit.** bitsandbytes replaces the linear layers inside the
  transformer blocks; the token embeddings (not a linear layer), the output head (kept in
  16-bit by default) and the norms stay as they were.

labkit counts all of it for LLaMA-2 7B, built on PyTorch's `meta` device: shapes only,
nothing allocated, so it takes a moment even on a laptop.
"""),
    code('''
import torch

from labkit import lora, models, quant

cfg = models.get_config("llama-2-7b")
model = models.build(cfg, device="meta")  # shapes only: no memory is allocated
n_total = models.count_params(cfg)
linears = {name: m.weight.numel() for name, m in model.named_modules()
           if isinstance(m, torch.nn.Linear) and name.startswith("layers.")}
n_4bit = sum(linears.values())
n_16bit = n_total - n_4bit  # embeddings, output head, norms
targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
n_adapter = lora.count_lora_params(model, targets, r=16).trainable

print(f"LLaMA-2 7B parameters:            {n_total:>13,}")
print(f"  in the blocks' {len(linears)} linear layers: {n_4bit:>13,} ({n_4bit / n_total:.1%})")
print(f"  embeddings, head and norms:     {n_16bit:>13,} ({n_16bit / n_total:.1%})")
print(f"LoRA adapters, r = 16, 7 targets: {n_adapter:>13,} ({n_adapter / n_total:.2%})")
'''),
    md("""
So "7B" is 6.74 billion, and almost 4 % of it sits outside the linear layers. The adapters
on all seven projections of every block are 40 million parameters: in bf16 that is the
cheat sheet's 0.08 GB. Now the bits per weight:
"""),
    code('''
plain = quant.bits_per_weight("nf4", blocksize=64, double_quant=False)
dq = quant.bits_per_weight("nf4", blocksize=64, double_quant=True)
print(f"NF4, fp32 scales:          {plain:.3f} bits per weight = {plain / 16:.1%} of 16-bit")
print(f"NF4, double quantization:  {dq:.3f} bits per weight = {dq / 16:.1%} of 16-bit")
'''),
    md("""
### Your turn: the bytes of a QLoRA model

Write `qlora_bytes(n_base, n_adapter)`: the frozen base stored in NF4 with one fp32 absmax per
block of 64 weights (the 4.5 bits above), plus the adapters kept in bf16 (2 bytes each).
Assume every base weight is quantized. Return bytes.

*Hint:* bits per weight times weights, divided by 8, is bytes. Which of the two parts is
compressed?
"""),
    code('''
def qlora_bytes(n_base, n_adapter):
    """Bytes of a QLoRA model's weights: a 4.5-bit base plus bf16 adapters."""
    ### BEGIN SOLUTION
    base = n_base * (4 + 32 / 64) / 8
    adapters = n_adapter * 2
    return base + adapters
    ### END SOLUTION
''', exercise="qlora-bytes"),
    md("The check runs your function on several sizes and names the mistake if there is one:"),
    code('''
from labkit import checks

checks.check_memory_term(qlora_bytes, "qlora_weights")
'''),
    md("""
Stuck? `python -m labkit.classroom workspace --solution 07 qlora-bytes` prints the solution.

### The simple answer against the real one

labkit's `quant.quantized_nbytes` counts every byte bitsandbytes stores for a 4-bit layer:
the packed codes, the 8-bit scales, their fp32 second-level scales, the offset and the two
small code tables. Add the 16-bit parts that are not quantized and the 16-bit adapters:
"""),
    code('''
GB = 1e9
cheat_round = (14.0 + 0.08) * 0.25  # the cheat sheet's numbers, brackets fixed
cheat_exact = (n_total + n_adapter) * 2 * 0.25 / GB  # the same rule on the exact counts
quantized = sum(quant.quantized_nbytes(n, 64, double_quant=True) for n in linears.values())
parts = {
    "4-bit linear layers (NF4 + DQ)": quantized / GB,
    "16-bit embeddings, head, norms": n_16bit * 2 / GB,
    "16-bit adapters (r = 16)": n_adapter * 2 / GB,
}
real = sum(parts.values())
for what, gb in parts.items():
    print(f"{what:<34} {gb:6.2f} GB")
print(f"{'real total (labkit)':<34} {real:6.2f} GB")
print(f"{'cheat sheet, round numbers':<34} {cheat_round:6.2f} GB")
print(f"{'cheat-sheet rule, exact counts':<34} {cheat_exact:6.2f} GB")
print(f"the simple rule is {1 - cheat_exact / real:.0%} below the real size")
'''),
    code('''
from labkit import plots

fig = plots.bars(
    {"cheat sheet (x 0.25)": cheat_exact, "real (labkit)": real},
    xlabel="GB of weights", title="LLaMA-2 7B + LoRA r=16, QLoRA storage", fmt="{:.2f} GB",
)
'''),
    md("""
The simple rule comes out low by the percentage printed above. Most of the gap is the
embeddings and output head that stay in 16-bit (the second line of the table); the block
scales add about 3 % to the quantized part (4.127 instead of 4 bits); the adapters are small
either way. For "will it fit on my GPU?" that gap matters, and training adds gradients,
optimizer state and activations on top (lesson 06).

**Takeaways**
* LoRA trains small low-rank matrices next to frozen weights; QLoRA also stores those frozen
  weights in 4 bits.
* Check which part a factor applies to, and bracket sums: `(a + b) * f`, not `a + b * f`.
* Real 4-bit storage is about 4.13 bits per weight, the adapters stay in 16 bits, and the
  embeddings and head are usually not quantized.

## Quiz
"""),
    code('quiz.lesson_quiz("07")'),
]


# --------------------------------------------------------------------------- lesson 08

L08 = [
    md("""
# 08 · Review: flashcards, a test, explain it yourself

Three ways to find out what stuck:

1. **Flashcards**: the key facts of every topic; say the answer, reveal it, mark it.
2. **The 10-question test**: 3 easy, 4 medium and 3 hard questions from all topics, no
   hints, a score with a per-topic breakdown at the end.
3. **Explain in your own words**: two short answers, scored against a checklist of the key
   concepts, so you see which idea is missing.

The lesson ends with the whole course on one page: the parameters, bytes and accuracies you
computed along the way, recomputed here by labkit. Your answers are saved on this machine
only; `python -m labkit.quiz progress` lists them per topic.
"""),
    md("## 1 · Flashcards"),
    code('''
from labkit import quiz

quiz.flashcards(seed=0)
'''),
    md("""
## 2 · The 10-question test

Answer each question and press **Check** (one try each, as in an exam); then press
**Finish and score**. In a terminal the same test runs with
`python -m labkit.quiz test --seed 0`; another seed draws another test.
"""),
    code('''
test = quiz.take_test(seed=0)
test
'''),
    md("The test mixes difficulties and topics by design:"),
    code('''
from collections import Counter

print("difficulty:", dict(Counter(item.difficulty for item in test.items)))
print("topics:    ", dict(sorted(Counter(item.topic for item in test.items).items())))
'''),
    md("""
**Finish and score** shows your score and where the points were lost, topic by topic. You can
also score it from code. Before any answer it reads 0; answer above, then run this cell again:
"""),
    code('print(test.finish().text())'),
    md("""
## 3 · Explain in your own words

Write two to four whole sentences, as if to a colleague, then press **Check**. The answer is
scored against a checklist of concepts ("3/4 concepts"); a list of keywords scores nothing,
and a statement that is false (say, "LoRA trains all the weights") is flagged.

**What is LoRA, and why does it help?**
"""),
    code('quiz.show(ids=["lb-explain"])'),
    md("**How does QLoRA improve on LoRA?**"),
    code('quiz.show(ids=["ql-explain"])'),
    md("""
How the scoring reads an answer: here is a first draft that is true but thin. The feedback
names the concepts it covers and the ones it misses.
"""),
    code('''
draft = (
    "LoRA is a low-rank adaptation of a large model. "
    "It trains two small matrices for each chosen layer."
)
print(quiz.check(quiz.load_bank().by_id["lb-explain"], draft).message)
'''),
    md("""
## The course on one page

Every number below is computed here by labkit, from the same functions the lessons used.
"""),
    code('''
import torch

from labkit import lora, models, quant

cfg = models.get_config("llama-2-7b")
model = models.build(cfg, device="meta")  # shapes only
n_total = models.count_params(cfg)
linears = {name: m.weight.numel() for name, m in model.named_modules()
           if isinstance(m, torch.nn.Linear) and name.startswith("layers.")}
all7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
qv = lora.count_lora_params(model, ["q_proj", "v_proj"], r=8).trainable
full = lora.count_lora_params(model, all7, r=16).trainable

print("PARAMETERS (LLaMA-2 7B)")
print(f"  one 4096 x 4096 projection          {4096 * 4096:>14,}")
print(f"  its rank-8 adapter, r (d + k)       {lora.lora_param_count(4096, 4096, 8):>14,}")
print(f"  whole model                         {n_total:>14,}")
print(f"  LoRA r=8 on q, v (the paper's)      {qv:>14,}  {qv / n_total:.3%}")
print(f"  LoRA r=16 on all 7 projections      {full:>14,}  {full / n_total:.2%}")
print(f"  the course's tiny model             {models.count_params('tiny'):>14,}")
'''),
    code('''
GB = 1e9
n_lin = sum(linears.values())
nf4 = sum(quant.quantized_nbytes(n, 64, double_quant=True) for n in linears.values())
print("BYTES OF THE WEIGHTS (LLaMA-2 7B)")
print(f"  fp32                                {n_total * 4 / GB:8.2f} GB")
print(f"  bf16                                {n_total * 2 / GB:8.2f} GB")
print(f"  QLoRA: NF4 + DQ linears, rest bf16  {(nf4 + (n_total - n_lin) * 2) / GB:8.2f} GB")
print(f"  NF4 + DQ, bits per weight           {quant.bits_per_weight('nf4', 64, True):8.3f}")
print("OPTIMIZER STATE (AdamW: 2 fp32 moments = 8 bytes per trained parameter)")
print(f"  full fine-tuning                    {n_total * 8 / GB:8.2f} GB")
print(f"  LoRA r=16 on all 7 projections      {full * 8 / GB:8.2f} GB")
'''),
    md("""
**ACCURACY** on the course's own task: the shipped tiny model, pretrained to reverse words,
fine-tuned to `shift` (lessons 03 and 05 compare the methods over 3 seeds; this is one run,
seed 0, a few seconds each). The last column is the old skill afterwards: full fine-tuning
overwrites it, adapters leave the base untouched (switch the adapter off and it is back).
"""),
    code('''
import copy

from labkit import qlora, train

base = models.load_pretrained().model
runs = {}
for method in ("full fine-tuning", "LoRA r=16", "QLoRA r=16"):
    m = copy.deepcopy(base)
    if method.startswith("LoRA"):
        lora.add_lora(m, all7, r=16, alpha=32)
    elif method.startswith("QLoRA"):
        qlora.prepare_qlora(m, all7, r=16, alpha=32)
    steps = 100 if method.startswith("full") else 120
    train.train(m, "shift", steps=steps, lr=3e-3, batch_size=32, seed=0, progress=False, eval_n=1)
    trained = lora.count_params(m).trainable
    shift = train.evaluate(m, "shift", n=100)
    if method.startswith("full"):
        reverse = train.evaluate(m, "reverse", n=100)
    else:
        with lora.adapters_disabled(m):
            reverse = train.evaluate(m, "reverse", n=100)
    runs[method] = (trained, shift, reverse)

print(f"{'ACCURACY (100 test words)':28}{'trained params':>15}{'shift':>7}{'reverse after':>15}")
print(f"{'pretrained, before':28}{0:>15,}{train.evaluate(base, 'shift', n=100):>7.0%}"
      f"{train.evaluate(base, 'reverse', n=100):>15.0%}")
for method, (trained, shift, reverse) in runs.items():
    note = " (adapter off)" if not method.startswith("full") else ""
    print(f"{method:28}{trained:>15,}{shift:>7.0%}{reverse:>15.0%}{note}")
'''),
    md("""
## Final quiz
"""),
    code('quiz.lesson_quiz("08", seed=1)'),
]


def main() -> None:
    for cells, name, prefix in ((L07, "07_practice.ipynb", "l07"), (L08, "08_review.ipynb", "l08")):
        print("wrote", write(cells, name, prefix))


if __name__ == "__main__":
    main()
