"""Real checkpoints: released models into gptjax runs, and gptjax runs out to Hugging Face.

families.py  the GPT-2 and Llama families: which config.model switches make
             each, and the exact mapping between gptjax's parameter layout
             and the state dicts of GPT2LMHeadModel / LlamaForCausalLM
gguf.py      a llama.cpp GGUF file (architecture "llama") -> config.model,
             dequantized float32 params (Q and K rows un-permuted for
             rotate_half RoPE) and its byte-level BPE tokenizer + chat template
hf.py        a Hugging Face model directory (config.json, model.safetensors,
             tokenizer files) <-> config.model, params and tokenizer
workdir.py   a converted model as a gptjax run: config.json, a checkpoint
             written by gptjax.checkpoint, the tokenizer's files; and reading
             any gptjax run back
convert.py   what a path is (GGUF file, HF directory, gptjax run) and one
             `convert(src, dst)` between them (experiments/convert.py)
"""
