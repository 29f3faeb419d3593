"""The explain scorer's shared vocabulary: one synonym table for every explain item, the
formula spellings, and the small closed word lists that find clauses and negation.

**Synonym table** (:data:`SYNONYMS`). Each class (an upper-case name such as ``FROZEN``) lists
the words and phrases that say the same thing in this course, so an item that asks for
"frozen" also credits "fixed", "kept unchanged", "not updated" or "untouched", whichever the
learner writes. Entries are matched on lemmas (``trained`` -> ``train``; see
:mod:`labkit.quiz.explain_text`), so one form stands for all inflections. A phrase entry
may have ``be``/``get`` words inside it ("not updated" also reads "is not being updated").
A word may belong to several classes ("smaller" is ``LESS`` and ``SMALLER``; "update" is a
verb, ``TRAIN``, and a noun, ``UPDATE``). Entries that contain a negation ("not updated")
are read as one positive unit that negates what follows it ("not trained from scratch"). An
upper-case word inside an entry stands for any word of that class ("two SMALL matrix" reads
"two thin matrices", "two tiny matrices", "two narrow matrices").

The table holds the course's own vocabulary, general English synonyms and notation; it was
written from the lessons and the bank, not from the graded answers that test the scorer.

**Formulas** (:data:`REWRITES`). Before words are read, notation is turned into one token:
``r(d + k)``, ``r*(d+k)``, ``r (d+k)``, ``r·(d+k)``, ``dr + rk`` and "r times d plus k" all
become ``zzrdk``; ``B A``, ``BA``, ``B@A``, ``B(Ax)`` and "B times A" become ``zzprodba``;
``4-bit``, "four bits", ``NF4`` become ``zzfourbit``; ``16-bit``, ``bf16``, ``fp32``, "full
precision" become ``zzhighbits``; ``alpha/r`` ``zzscale``; ``d x r`` ``zzshapedr``; ``r x k``
``zzshaperk``; ``d*k`` ``zzdk``; ``10x``, "ten times" ``zzmult``; ``1%`` ``zzpercent``.
Capital ``A``, ``B`` and ``W`` are the matrices (a sentence's first "A" is the article unless
a verb or symbol follows), so "a" the article never reads as matrix A.

Imports: the standard library only.
"""

from __future__ import annotations

import re

#: class -> the words and phrases that express it (comma-separated, matched on lemmas).
SYNONYMS: dict[str, str] = {
    # --- what is trained and what is not
    "FROZEN": "frozen, freeze, fixed, kept fixed, unchanged, untouched, unmodified, intact, "
    "locked, static, read only, not updated, not update, not trained, not train, not touched, "
    "not touch, not change, not changed, not modify, not modified, no update, no updates, "
    "as it is, as is, left alone, stay the same, stays the same, requires_grad false",
    "TRAIN": "train, trainable, update, learn, optimise, optimize, tune, adjust, retrain",
    "UPDATE": "update, delta, change, correction, adjustment, increment, difference",
    "ADAPT": "adapt, adaptation, customise, customize, tailor, specialise, specialize, "
    "personalise, personalize, fine tune, finetune, ft, instruction tune, steer",
    "FULL_FT": "full fine tuning, full fine tune, full finetuning, full finetune, full ft, "
    "fully fine tune, full training, full update, full fine tuned",
    "LORA_NAME": "low rank adaptation, low rank adapter",
    "LORA": "lora",
    "QLORA": "qlora, quantized lora, quantised lora",
    "BASE": "base, pretrained, pre trained, original, existing, foundation, backbone, zzw, "
    "underlying, big model, large model, huge model",
    "MODEL": "model, network, net, llm, language model, neural network, architecture",
    "PARAM": "parameter, param, weight, weight matrix, entry, number, value",
    "W": "zzw",
    "ADAPTER": "adapter, add on, addon, plug in, side path, side branch, bottleneck, "
    "lora matrix, lora weight, lora module, lora part, lora layer, lora adapter, zzab, "
    "SMALL matrix, trainable matrix, trainable part",
    "MATRIX": "matrix, factor",
    "AB": "zzab",
    "MAT_B": "zzmatb, up projection",
    "MAT_A": "zzmata, down projection",
    "PROD_BA": "zzprodba, product of two, their product, product of the two",
    "LOWRANK": "low rank, rank r, thin, rank decomposition",
    "LOWRANK_PART": "low rank update, low rank delta, low rank correction, low rank change, "
    "low rank matrix, low rank product, low rank term, low rank factor, low rank adapter, "
    "rank r update, rank r product, rank r matrix, rank r correction, rank r delta, "
    "SMALL update, two SMALL matrix, two matrix, pair of SMALL matrix, SMALL trainable matrix, "
    "SMALL low rank matrix, zzprodba",
    "RANK": "rank, zzr",
    # --- sizes, amounts, comparisons
    "SMALL": "small, tiny, little, thin, narrow, skinny, slim, lightweight, compact, few, "
    "handful, minor, modest",
    "SMALLER": "smaller, tinier",
    "LESS": "less, fewer, lower, reduce, reduction, cut, save, saving, smaller, drop, "
    "decrease, lighter, shrink, down, divide, halve",
    "MORE": "more, higher, larger, bigger, raise, increase, greater, high, large, big, up",
    "FRACTION": "fraction, zzpercent, percent, percentage, ratio, tiny fraction, small share",
    "MULT": "zzmult, times smaller, times less, quarter, half, factor of",
    "ALL": "all, every, whole, entire",
    "EXTRA": "extra, additional, overhead, latency",
    "COST": "cost, price, expense, bill, money, time",
    "CHEAP": "cheap, cheaper, cheaply, low cost, affordable, inexpensive, cost less, "
    "costs less, budget",
    # --- hardware and memory
    "MEMORY": "memory, ram, vram, gpu memory, footprint, space, gb, gigabyte, "
    "memory footprint",
    "STORAGE": "storage, disk, file, checkpoint, store, ship, megabyte, mb, swap, switch, "
    "swappable, version, variant, share",
    "GPU": "gpu, card, hardware, cluster, laptop, machine, device, accelerator, consumer gpu, "
    "single gpu, one gpu",
    "FIT": "fit, fits, fitting, squeeze in",
    "RUN": "run, serve, host, deploy",
    # --- a training step
    "GRAD": "gradient, grad, backward pass, backprop",
    "OPT": "optimizer, optimiser, adam, adamw, moment, optimizer state, optimiser state, "
    "adam state, adamw state, momentum",
    "ACTIVATION": "activation, activation memory, saved tensor",
    "STEP": "step, iteration, per step, each step, every step, training step, step time",
    "FAST": "fast, faster, quick, quicker, speed, speedup, speed up, save time, "
    "accelerate, cheaper to compute, cheaper to multiply, cheap to multiply",
    "MUCH": "much, massively, far, way, many time, order of magnitude, dramatically, hugely",
    "SLOW": "slow, slower, overhead",
    "INFERENCE": "inference, generation, serving, decode, decoding, loading, load, read, "
    "download, switching, swap",
    # --- bits and quantization
    "FOURBIT": "zzfourbit",
    "EIGHTBIT": "zzeightbit",
    "HIGHBITS": "zzhighbits",
    "QUANT": "quantize, quantise, quantization, quantisation, quantized, quantised",
    "LOWBITS": "zzfourbit, zzeightbit, fewer bit, less bit, low precision, lower precision, "
    "low bit, smaller number format",
    "DEQUANT": "dequantize, dequantise, dequantization, dequantisation, unpack, expand, "
    "decompress, cast, convert, upcast",
    "BIT": "bit, byte, precision, bit width, number format, format",
    "MATH": "math, maths, arithmetic, matmul, multiply, multiplication, compute, computation",
    "PLAIN": "plain, regular, normal, standard, ordinary, vanilla, classic, usual",
    # --- what LoRA is not
    "SHRINK": "compress, compression, shrink, make smaller, get smaller, become smaller, "
    "end up smaller, smaller version, reduce the size, downsize, distil, distill",
    "DECOMPOSE": "decompose, decomposition, factorize, factorise, factorization, "
    "factorisation, approximate, approximation",
    # what the LoRA variants really split or approximate (DoRA, PiSSA, LoftQ): naming one
    # of these, "decompose the weight" or "approximate the error" is not the misconception
    "VARIANT_SPLIT": "magnitude, direction, singular value, singular vector, singular, svd, "
    "residual, quantization error, quantisation error, rounding error",
    "REPLACE": "replace, replacement, substitute, swap out",
    "SCRATCH": "from scratch, from nothing, from the ground up, random initialisation of the "
    "model, random initialization of the model",
    "NEW": "new, separate, own, standalone, distinct, lightweight, fresh, second",
    "BUILD": "build, create, construct, make, train, design",
    "NEED": "need, require",
    "ANYMORE": "anymore, any more, no longer, any longer",
    "ADD": "add, insert, grow, extend, append, attach",
    "REMOVE": "remove, delete, drop, prune, strip",
    "LAYER": "layer, projection, attention, mlp, linear, q, v, k, o, module, head",
    "DATA": "data, dataset, example, sample, label",
    "GENERATE": "generate, synthesize, synthesise, produce, invent, create",
    "TASK": "task, domain, style, use case, customer, chatbot, application, project, "
    "company, job, client, purpose, language",
    # --- layers, merging, initialisation
    "MERGE": "merge, fold, bake, absorb, fuse, merged, mergeable",
    "AFTER": "after training, once training is done, after fine tuning, at the end, "
    "afterwards, afterward, for deployment, for inference, when training end, "
    "training is done, training is finished, when training is done, after the training, "
    "once training is finished, at inference, for serving, later",
    "DURING": "during training, while training, every step, each step, after each step, "
    "after every step, every optimizer step, each optimizer step, per step, every iteration, "
    "each iteration, as it train, gradually, continuously, throughout training, "
    "during fine tuning, in every step",
    "ZERO": "zero, zeros, zeroes, 0, nothing",
    "START": "start, init, initialise, initialize, initialisation, initialization, begin, "
    "at first, step 0, at the start, beginning, initially",
    "BOTH": "both, zzab, each matrix, both matrix, the two matrix",
    "SAME": "same, identical, exactly, equal, match, like the pretrained, unchanged",
    "RANDOM": "random, randomly, gaussian, kaiming, normal distribution",
    "SCALE": "zzscale, alpha, scale, scaling, scaled",
    "DK": "zzdk",
    "RDK": "zzrdk",
    "SHAPE_DR": "zzshapedr",
    "SHAPE_RK": "zzshaperk",
    "SUM": "sum, add up, total",
    "LINEAR": "linear, linearly, grow linearly, scale linearly",
    "LR": "learning rate, lr, step size",
    "TARGET": "target, apply, put, attach, insert, inject, place, choose",
    "CAPACITY": "capacity, expressive, expressiveness, expressivity, complexity, express, "
    "expressive power, room",
    # --- data parallel
    "SHARD": "shard, slice, chunk, portion, share of the batch, part of the batch, "
    "piece of the batch, subset",
    "BATCH": "batch, data, minibatch, mini batch, example",
    "SPLIT": "split, divide, partition, spread, distribute",
    "COPY": "copy, replica, clone",
    "ALLREDUCE": "all reduce, allreduce, average, averaged, mean, sync, synchronise, "
    "synchronize, synchronisation, synchronization, exchange, aggregate, reduce",
    "SEND": "send, transfer, travel, communicate, move, exchange, transmit, ship",
    "TRAFFIC": "traffic, bandwidth, communication, network, interconnect, bytes",
    "FSDP": "fsdp, zero3, zero 3, deepspeed, sharded data parallel",
}

#: Notation turned into one token before words are read (see the module docstring).
#: Order matters: longer formulas first. Case-sensitive patterns say so with (?-i).
_NUM = r"(?:\d+(?:\.\d+)?)"
REWRITES: list[tuple[str, str]] = [
    # r (d + k), r*(d+k), r·(d+k), (d+k) r, r times (d plus k), r times d plus k
    (r"\br\s*(?:[*·×x]|times)?\s*\(\s*d\s*(?:\+|plus)\s*k\s*\)", " zzrdk "),
    (r"\(\s*d\s*\+\s*k\s*\)\s*[*·×]?\s*r\b", " zzrdk "),
    (r"\br\s+times\s+d\s+plus\s+k\b", " zzrdk "),
    (r"\b(?:d\s*[*·×]?\s*r|r\s*[*·×]?\s*d)\s*(?:\+|plus)\s*(?:r\s*[*·×]?\s*k|k\s*[*·×]?\s*r)\b",
     " zzrdk "),
    (r"\bd\s+times\s+r\s+plus\s+r\s+times\s+k\b", " zzrdk "),
    (r"\bd\s*(?:[*·×x]|by|times)\s*k\b|\bdk\b", " zzdk "),
    (r"\bd\s*(?:[x×]|by)\s*r\b|\bd\s*[*·]\s*r\b", " zzshapedr "),
    (r"\br\s*(?:[x×]|by)\s*k\b|\br\s*[*·]\s*k\b", " zzshaperk "),
    (r"(?:alpha|α)\s*/\s*r\b|\b(?:alpha|α)\s+over\s+r\b", " zzscale "),
    (r"\b(?:4|four)\s*-?\s*bits?\b|\b(?:nf4|int4|fp4|4bit)\b", " zzfourbit "),
    (r"\b(?:8|eight)\s*-?\s*bits?\b|\bint8\b", " zzeightbit "),
    (r"\b(?:16|32)(?:\s*(?:/|or)\s*(?:16|32))?\s*-?\s*bits?\b|\b(?:bf16|fp16|fp32|bfloat16|"
     r"float16|float32|16bit|32bit)\b|\b(?:full|half|high|higher|normal|original)\s+"
     r"precision\b", " zzhighbits "),
    (_NUM + r"\s*%|\bper\s*cent\b", " zzpercent "),
    (r"~?\b" + _NUM + r"\s*x\b(?!\s*\d)|\bx\s*" + _NUM + r"\b", " zzmult "),
    (r"\b(?:two|three|four|ten|hundred|many|several)\s+times\b", " zzmult "),
    (r"<<|≪|\bmuch\s+less\s+than\b", " much smaller than "),
    (r">>|≫", " much larger than "),
    (r"(?-i:\bB\s*(?:@|·|\*|×|times)?\s*\(?\s*A(?:x\b|\b))|(?-i:\bAB\b)", " zzprodba "),
    (r"(?-i:\b(?:A\s*(?:,|and|&|\+)\s*B|B\s*(?:,|and|&)\s*A)\b)|\b(?:a and b|b and a)\b",
     " zzab "),
    (r"(?-i:\bW(?:x|_\w+)?\b'?)|\bw\b", " zzw "),
    (r"(?-i:\bB\b)|\bb\b", " zzmatb "),
    (r"\br\b", " zzr "),
]

#: Words that start the negation of what follows them in their clause.
NEGATIONS = {"not", "no", "never", "without", "nor", "neither", "none", "nothing", "cannot",
             "unlike", "than", "versus", "vs", "instead of", "rather than", "as opposed to",
             "compared with", "compared to", "in contrast to", "in place of", "not even"}
#: Words that present a claim as someone's belief; they negate the rest of the sentence
#: unless "I" or "we" says them.
HEDGES = {"think", "believe", "assume", "expect", "myth", "misconception", "misunderstanding",
          "wrongly", "mistakenly", "claim", "suppose", "imagine"}
#: "not" right before these is not a negation ("not only the attention layers").
NOT_NEGATING = {"only", "just", "merely", "necessarily"}
#: Words inside a multi-word entry that may stand between its words ("is not *being* updated").
FILLERS = {"be", "being", "been", "get", "got", "getting", "ever", "really", "actually",
           "even", "much", "very", "just"}
#: Words that always start a new clause (negation stops before them).
CLAUSE_WORDS = {"but", "while", "whereas", "because", "since", "although", "though", "which",
                "where", "whose", "unless", "however", "therefore", "thus", "hence", "yet",
                "whilst", "instead", "rather", "then", "once", "when", "if", "so", "meaning"}
#: "so" followed by one of these is a degree word, not a clause start ("so few weights").
SO_DEGREE = {"few", "many", "much", "little", "small", "large", "big", "fast", "slow", "far"}
#: After a comma or "and"/"or", a new clause starts with one of these (else the list goes on).
SUBJECTS = {"it", "they", "we", "you", "i", "he", "she", "this", "that", "these", "those",
            "there", "lora", "qlora", "everything", "after", "once", "when", "then",
            "afterwards", "later", "finally", "what", "its", "their", "our"}
AUXILIARIES = {"is", "are", "was", "were", "be", "stays", "stay", "remains", "remain", "will",
               "would", "can", "could", "should", "must", "has", "have", "had", "does", "do",
               "did", "may", "might", "gets", "keeps", "becomes", "goes"}
#: Verbs whose -s or -ed form after "and" starts a new predicate ("does not X and trains Y").
VERBS = {"train", "learn", "update", "store", "keep", "use", "add", "make", "need", "freeze",
         "save", "cut", "quantize", "quantise", "compress", "shrink", "run", "compute", "send",
         "hold", "merge", "apply", "give", "take", "fit", "start", "reduce", "remove",
         "generate", "create", "build", "replace", "let", "put", "adapt", "leave", "bolt"}
#: Symbols that state a relation (telegraphic notes such as "B = 0 -> BA = 0" are claims).
RELATION_SYMBOLS = {"=", "->", "=>", "<-", "→", "←", "+", "*", "/", "×", "·", "@", "~", "≈",
                    ":", "<", ">", "(", ")"}
#: Formula tokens (they stand for symbols such as ``*`` and ``+``), counted as relations.
FORMULAS = {"zzrdk", "zzshapedr", "zzshaperk", "zzdk", "zzprodba", "zzscale", "zzab"}
#: After a comma, one of these starts a new clause ("..., every version costs ...").
DETERMINERS = {"the", "a", "an", "every", "each", "all", "some", "any", "its", "their", "our",
               "your", "my", "his", "her", "no"}
#: Hedge verbs negate only with a subject before them and not as "think of" / "think about".
HEDGE_VERBS = {"think", "believe", "assume", "expect", "claim", "suppose", "imagine"}
#: Punctuation and arrows that always end a clause.
HARD_BREAKS = {";", ":", "(", ")", "[", "]", "—", "–", "->", "=>", "→", "<-", "←"}
SOFT_BREAKS = {",", "and", "or", "nor", "/", "&", "plus"}

FUNCTION_WORDS = set(
    """
    a an the is are was were be been being it its this that these those of to by in on for
    with from into as at and or nor but so than then only instead while which who whom can
    could does do did has have had will would shall should may might must we you they i he
    she our your their each every some not no just also there what how when if about after
    before through per via both either neither since because though although still even
    very much more less most least up down out over under again once here where why all any
    onto upon within without between among across toward towards like unlike until whether
    me us them my his her
    """.split()
)

_FLAGS = re.IGNORECASE


def compiled_rewrites() -> list[tuple[re.Pattern, object]]:
    """:data:`REWRITES` compiled (case-insensitive unless a pattern says ``(?-i:...)``)."""
    return [(re.compile(pattern, _FLAGS | re.MULTILINE), repl) for pattern, repl in REWRITES]


def entries() -> dict[str, list[str]]:
    """:data:`SYNONYMS` as class -> list of entries, with "not X" also read as "never X"."""
    out: dict[str, list[str]] = {}
    for name, text in SYNONYMS.items():
        items = [e.strip() for e in text.split(",") if e.strip()]
        items += ["never " + e[4:] for e in items if e.startswith("not ")]
        out[name] = items
    return out
