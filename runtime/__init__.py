"""edgeslim.runtime: run GGUF models with numpy/numba (CPU) or MLX; never imports torch.

Layout (each piece small, one job):
    loader.py      open_model(path) -> ModelFile: mmap, hyperparameters, tensor checks
    (families: edgeslim.arch, shared with the converter)
    ops.py         RMSNorm, RoPE, GQA attention, SwiGLU in numpy float32
    kv_cache.py    preallocated fp16/fp32 KV cache
    backends/      registry; numpy (reference), numba (packed kernels), mlx
    sampling.py    greedy / temperature / top-k / top-p / min-p / repetition penalty
    generate.py    Session (cache + tokens), prefill, Decoder (per-token stop rules), stats
    handle.py      Generation (cancel from any thread) and the KV-cache slot pool
    batch.py       batched decode: B sequences, one forward per step
    perplexity.py  llama-perplexity's windowing
    api.py         load() -> Model (generate, stream, chat, logits, perplexity)
    cli_*.py       `edgeslim generate`, `chat`, `eval`
    server/        `edgeslim serve`: OpenAI-compatible HTTP API + chat page
"""
