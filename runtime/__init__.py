"""edgeslim.runtime: run GGUF models with numpy/numba (CPU) or MLX; never imports torch."""
