"""llama-edge export toolchain (torch side): checkpoint loaders, the Llama model, the pipeline."""
